"""Rows in, examples out: loading and validating data files (local files, hub ids), preference files,
the built-in task generators, the order prompts are drawn in, verifier-built DPO pairs."""
