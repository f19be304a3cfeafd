"""Learning from production for the router's quality predictor.

`gateway serve` imports only the feedback half (`store.py`, `stash.py`, `feedback.py`: scores stored with
feature vectors, never text). Training and evaluation run offline, never on the request path; their
dependencies (scikit-learn, matplotlib) are the optional extra `train`.
"""
