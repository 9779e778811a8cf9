"""The model store: the catalogue of downloadable models, verified resumable downloads, installed models and the
model folder format (model.json) that the converter writes and the runtime loads."""
