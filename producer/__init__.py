"""The ``defectscan`` command line: local jobs now, listing and enqueueing batches later."""
