"""``python -m fastalex.reproduce``: the paper's claims as controlled experiments.

claims.py holds the claims as data (arms as overrides of ``options.resolve``, the measures);
runner.py trains every (arm, seed) through ``train.run``, resumably; measures.py reads each
run's metric; statistics.py gives mean, std, the 95% t-interval and the verdict; figures.py and
report.py write ``OUTPUT_DIR/REPORT.md`` and its plots; cli.py is the command line.
"""
