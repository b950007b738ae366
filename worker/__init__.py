"""The imperative shell around ``pipeline``: storage, and (later) the Celery app and batch bookkeeping."""
