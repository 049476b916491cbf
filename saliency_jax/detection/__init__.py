"""The RetinaNet detection baseline: anchors and targets (`boxes`), losses, post-processing
(decoding, NMS, score maps) and detection metrics; the network is `models.retinanet`."""
