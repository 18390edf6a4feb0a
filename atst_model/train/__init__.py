"""The trainer: settings and recipes (:mod:`.config`), the loop (:mod:`.trainer`), checkpoints, logs, checks."""
