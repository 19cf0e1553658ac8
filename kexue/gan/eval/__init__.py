"""Evaluating generators in a classifier's feature space: FID, KID, IS analogue, precision/recall, Welch's t-test."""
