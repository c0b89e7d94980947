"""What holds devices and processes: the DeepSpeed engine (the only DeepSpeed importer), the rollout
engines (the only vLLM importer), model and tokenizer loading, the tiny model builder, distributed
helpers and device moves, the reference-logprob cache."""
