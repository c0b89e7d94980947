"""Pure torch math: advantages, policy losses, DPO-family losses, logprob gathering and entropy,
sequence packing with its attention masks. Imports torch and the standard library only: no models,
config objects or I/O."""
