"""The Kubernetes side: API access, reconciliation, status, leader election and the kopf handlers."""
