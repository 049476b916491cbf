"""Names shared by the study's stages: image sets, model states and baseline "methods"."""

UTILITY_SET = "utility"        # all positive test images (the paper's utility set)
EVAL_SET = "eval"              # the seeded subset for the SSIM criteria (the paper's 100)
ORIGINAL = "original"          # the trained model
UNTRAINED = "untrained"        # every block re-initialized (the last cascading step)
CASCADE_PREFIX = "cascade_"
INDEPENDENT_PREFIX = "independent_"
LOCALIZATION_METHOD = "UNET"   # the localization network's output, scored like a map
AVERAGE_MASK = "AVERAGE_MASK"  # the mean positive training mask, used as a map

CRITERIA = ("utility", "randomization", "repeatability", "reproducibility")
