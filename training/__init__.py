"""Training ControlNet: the Fill50K toy data set, the Lightning trainer builder and the image logger."""
