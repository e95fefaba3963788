"""The ground floor: what every chapter shares (runtime, defaults and the config, files, pictures, the
embedded models and the toy world's scenes). Nothing here imports a chapter's module."""
