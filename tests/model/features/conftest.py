"""Shared pieces of the feature tests."""

# ImageNet normalisation, as the preprocessor configs of the tiny test models record it
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
