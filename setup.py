"""Packaging for saliency_jax: are saliency maps trustworthy enough to localize disease?"""
import setuptools

setuptools.setup(
    name="saliency_jax",
    version="0.1.0",
    description=(
        "JAX/Flax reimplementation of 'Assessing the (Un)Trustworthiness of Saliency Maps for "
        "Localizing Abnormalities in Medical Imaging' (Arun et al., 2021)."),
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["saliency_jax*", "launch*", "configs*"]),
    install_requires=[
        "jax",
        "flax",
        "optax",
        "orbax-checkpoint",
        "tensorflow-datasets",
        "grain",
        "scikit-image",
        "scipy",
        "numpy",
        "pydicom",
        "pillow",
        "absl-py",
        "ml-collections",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest",
            "saliency",
            "scikit-learn",
            "scipy",
            "keras>=3",
            "h5py",
            "pycocotools",
        ],
        "jpeg": ["pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"],
    },
)
