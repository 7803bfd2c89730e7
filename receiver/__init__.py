"""fluxrelay receiver: the verified HTTP ingress that stores webhooks on NATS JetStream."""
