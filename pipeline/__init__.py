"""Pure image and model logic for defectscan: arrays and dataclasses in, the same out.

Nothing here imports Celery, Redis or boto3, and nothing does I/O except loading a model directory.
"""

import warnings

# Two deprecation notices that anomalib's own imports raise (timm's old layer path, anomalib's dinov2
# package): they concern anomalib's code, not ours or a user's, so they never reach a terminal.
for _message in (
    r"Importing from timm\.models\.layers is deprecated",
    r"The anomalib\.models\.components\.dinov2",
):
    warnings.filterwarnings("ignore", message=_message, category=FutureWarning)
