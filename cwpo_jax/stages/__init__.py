"""The CW-PO pipeline stages; each reads what the previous one wrote under cfg.output_dir."""
