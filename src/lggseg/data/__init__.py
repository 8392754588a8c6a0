"""The data set: download, index and validate, patient-wise split, preprocess, the slice dataset,
augmentation, synthetic patients and the readers of new scans. Imports lggseg.core only."""
