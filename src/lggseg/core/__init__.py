"""What every stage stands on: params (config), paths, atomic writes, locks, disk space, secrets redaction,
stop signals and the architecture/encoder names params may use. Imports nothing else of lggseg."""
