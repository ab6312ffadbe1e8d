"""synapse.module_api.callbacks: the callback types modules import."""
