"""OpenAI's graders, run locally: ``string_check``, ``text_similarity``, ``score_model``,
``label_model``, ``python`` and ``multi``, with their templates.

- ``template``: ``{{item.*}}`` and ``{{sample.*}}``;
- ``check``: validation, a 400 naming the field;
- ``run``: one sample graded, the reward and OpenAI's error flags;
- ``similarity``, ``formula``, ``python_grader`` (with ``sandbox``), ``judges``: the parts.

The wire schema is ``selftune.schemas.graders``; the routes are ``selftune.server.graders``.
"""
