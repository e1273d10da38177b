"""`kubectl hotswap`: the kubectl plugin (console script `kubectl-hotswap`).

Reads and edits ModelDeployments the way a user at a terminal does: `status`,
`history`, `undo`, `pause`, `resume` (argo-rollouts' `kubectl argo rollouts` is the model).
It needs only the operator's dependencies (kubernetes, pydantic, PyYAML), never torch,
and only the RBAC permissions `api.PERMISSIONS` lists.

| module | owns |
| --- | --- |
| `cli.py` | arguments, subcommands, output format, exit codes |
| `api.py` | the connection (kubeconfig, context, namespace) and the calls, with permissions |
| `reports.py` | where per-pod reports are read (the one place to change if they move) |
| `views.py` | what `status` and `history` show (pure): a document (`-o json|yaml`), text |
| `edits.py` | the spec edits (pure): undo to a revision of `status.history`, pause, resume |
"""
