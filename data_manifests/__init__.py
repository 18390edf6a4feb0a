"""Dataset descriptors (``datasets/*.toml``) and the paper's published table (``published/*.toml``).

Installed as the package ``atst_manifests`` (see ``setup.py``) and read with
:mod:`importlib.resources` through :func:`atst_prep.resources.manifests_dir`.
Keep-lists written by ``atst prep filter-misaligned`` go to ``data_manifests/``
of the checkout (or of the working directory when installed from a wheel).
"""
