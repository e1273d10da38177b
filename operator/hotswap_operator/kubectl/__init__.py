"""`kubectl hotswap`: the kubectl plugin (console script `kubectl-hotswap`).

Reads and edits ModelDeployments the way a user at a terminal does: `list`, `status`,
`history`, `undo`, `pause`, `resume`, `promote`, `abort`, `retry`, plus `version` and
`completion` (argo-rollouts' `kubectl argo rollouts` is the model). It needs only the
`[kubectl]` extra (kubernetes, PyYAML, prometheus-client, with pydantic), never torch or
kopf, and only the RBAC permissions `api.PERMISSIONS` lists.

| module | owns |
| --- | --- |
| `__main__.py` | the console script: says which package is missing, and how to install it |
| `cli.py` | arguments, subcommands, output format, exit codes |
| `api.py` | the connection (kubeconfig, context, namespace) and the calls, with permissions |
| `reports.py` | where per-pod reports are read (the one place to change if they move) |
| `views.py` | what each command shows (pure): a document (`-o json|yaml`), text |
| `completion.py` | the bash and zsh completion scripts, derived from the parser (pure) |
| `edits.py` | the spec edits (pure): undo to a revision of `status.history`, pause, resume |
"""
