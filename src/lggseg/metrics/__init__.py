"""Segmentation and detection metrics from confusion counts (slice, patient/volume Dice, ROC), one
definition for training, evaluation and prediction. Imports nothing else of lggseg."""
