"""Lung-field segmentation: the paper's U-Net, classical OpenCV baselines, GrabCut auto-labelling and
``Segmenter`` (weights + config with ``predict`` at the input's own size). Ray-free."""
