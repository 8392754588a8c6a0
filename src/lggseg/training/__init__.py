"""The train stage: the epoch loop, validation, resume and checkpoint policy, tumour-slice sampling.
Imports lggseg.model, lggseg.metrics, lggseg.tracking, lggseg.data and lggseg.core."""
