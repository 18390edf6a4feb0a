"""Package layout that ``setup.cfg`` cannot say: the ``cli/`` folder installs as ``atst_cli`` and
``data_manifests/`` as ``atst_manifests`` (no top-level ``cli`` package in site-packages)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["atst_prep", "atst_prep.*", "atst_model", "atst_model.*"])
    + ["atst_cli", "atst_manifests"],
    package_dir={"atst_cli": "cli", "atst_manifests": "data_manifests"},
    package_data={"atst_model": ["cppnet/weights/*.pt", "weights/*.pt"],
                  "atst_manifests": ["datasets/*.toml", "published/*.toml", "*.csv"]},
)
