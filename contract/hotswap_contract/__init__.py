"""What the operator and the runtime agree on: the wire documents, the admin's
policy and redaction. Pydantic and the standard library only (no torch, no kubernetes).
"""
