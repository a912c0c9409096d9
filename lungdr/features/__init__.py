"""Hand-crafted image features (Ray-free): the Gabor texture bank used by the SVM classifier."""
