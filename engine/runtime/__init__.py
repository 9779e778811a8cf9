"""Running a converted model: a picture becomes image rows (preprocess, vision), rows and a prompt become an answer
(prompt, llm, sampling, conversation), behind ``load_model`` (model) and live captions (caption).

Depends on ``engine.models`` only to find an installed model by name; never on ``engine.convert`` or the CLI.
"""
