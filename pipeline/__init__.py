"""Pure image and model logic for defectscan: arrays and dataclasses in, the same out.

Nothing here imports Celery, Redis or boto3, and nothing does I/O except loading a model directory.
"""
