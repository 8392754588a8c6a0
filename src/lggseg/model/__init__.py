"""The network: smp architectures, checkpoints, devices and precision, multi-GPU groups and batched
inference. Imports lggseg.data and lggseg.core."""
