"""The desired revision: watchers of model.json, the reconciler, the journal, the pod's report.
No torch here: the reconciler drives a `SwapTarget` (target.py).
"""
