"""Every matplotlib figure and the architecture comparison table, one module per figure family."""
