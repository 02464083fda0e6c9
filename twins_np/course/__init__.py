"""The course: assignments made from the library's own code, and a grader a class cannot beat.

One job per module:

- :mod:`~twins_np.course.tasks`: the task table and the solution markers (authoring);
- :mod:`~twins_np.course.checks`: how each task is checked (cases from a seed, outputs compared);
- :mod:`~twins_np.course.build`: the student copy, its handout and the grading manifest;
- :mod:`~twins_np.course.manifest`: reading the manifest;
- :mod:`~twins_np.course.runner`: the processes of a grading run and their sandbox
  (with ``warden.py`` and ``worker.py``, run as scripts, and :mod:`~twins_np.course.wire`,
  the message format);
- :mod:`~twins_np.course.reference`: the trusted process that runs the solutions;
- :mod:`~twins_np.course.grader`: grading, which imports only the runner and the manifest reader;
- :mod:`~twins_np.course.autograder`: the Gradescope zip and its ``results.json``;
- :mod:`~twins_np.course.student`: the student's ``status`` and ``submit``.

The package reads the library (twins_np.functional, nn, optim, ...); nothing in the library
imports it.
"""
