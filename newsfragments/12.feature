With `[log] access`, access events are built once and written as JSON lines by every worker directly, with no text rendering and no relay through the parent.
