"""defectscan: self-hosted visual inspection.

The one import name the distribution installs. Its sub-packages are the repository's folders
``pipeline/`` (image and model logic), ``worker/`` (Celery, storage, batches) and ``producer/`` (the
command line), linked here so that the source tree and the installed package have the same names:
``defectscan.pipeline``, ``defectscan.worker``, ``defectscan.producer``. Nothing is re-exported.
"""
