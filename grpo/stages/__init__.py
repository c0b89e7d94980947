"""One readable loop per stage (`sft`, `dpo`, `grpo`: each defines `train(ctx, init_model_path)`),
the pipeline that runs them in order, evaluation, and the context they share. A stage never imports
another stage."""
