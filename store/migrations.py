"""The schema of sealong.db as named migrations, in the order they apply (store/db.py `migrate` applies the
ones a database lacks and records each in `_migrations`). Append a new one; never edit one that has shipped:
databases in the field already ran it.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            config_json TEXT NOT NULL,
            config_path TEXT,
            created_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',      -- running | finished | failed | stopped
            stop_requested INTEGER NOT NULL DEFAULT 0,
            max_rounds INTEGER NOT NULL,
            finished_at REAL,
            message TEXT
        );
        CREATE TABLE questions (
            id TEXT PRIMARY KEY,
            split TEXT NOT NULL,                          -- train | eval
            task TEXT NOT NULL,
            source TEXT NOT NULL,
            question TEXT NOT NULL,
            context TEXT NOT NULL,
            answers_json TEXT NOT NULL,                   -- gold answers; never read by training
            n_tokens INTEGER NOT NULL,
            pool_index INTEGER NOT NULL
        );
        CREATE INDEX questions_split ON questions(split, pool_index);
        CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            round_id INTEGER NOT NULL,
            parent_id TEXT REFERENCES adapters(id),       -- the champion that sampled its data (NULL: base)
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,                         -- candidate | champion | rejected | retired
            created_at REAL NOT NULL,
            train_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE rounds (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            idx INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',       -- running | done | failed
            policy_adapter_id TEXT REFERENCES adapters(id),  -- champion at round start (NULL: base)
            candidate_adapter_id TEXT REFERENCES adapters(id),
            promoted INTEGER,
            decision_json TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            UNIQUE (run_id, idx)
        );
        CREATE TABLE stages (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            name TEXT NOT NULL,                           -- sample | score | pairs | train | eval | promote
            seq INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',       -- pending | running | done | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            pid INTEGER,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            output_json TEXT,
            progress_done REAL NOT NULL DEFAULT 0,
            progress_total REAL NOT NULL DEFAULT 0,
            progress_unit TEXT NOT NULL DEFAULT '',
            progress_note TEXT NOT NULL DEFAULT '',
            UNIQUE (round_id, name)
        );
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            sample_idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            truncated INTEGER NOT NULL DEFAULT 0,
            seed INTEGER NOT NULL,
            mbr_score REAL,
            UNIQUE (round_id, question_id, sample_idx)
        );
        CREATE TABLE pairs (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            chosen_sample_id INTEGER NOT NULL REFERENCES samples(id),
            rejected_sample_id INTEGER NOT NULL REFERENCES samples(id),
            UNIQUE (round_id, question_id)
        );
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY,
            model_key TEXT NOT NULL,                      -- 'base' or an adapter id
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            task TEXT NOT NULL,
            output TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            subem REAL NOT NULL,
            UNIQUE (model_key, question_id)
        );
        CREATE TABLE train_steps (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            step INTEGER NOT NULL,
            loss REAL, nll REAL, or_loss REAL, log_odds_ratio REAL, lr REAL, grad_norm REAL,
            tokens_per_s REAL, ts REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            run_id INTEGER,
            round_id INTEGER,
            stage TEXT,
            level TEXT NOT NULL,                          -- info | warn | error
            message TEXT NOT NULL
        );
        CREATE VIEW eval_summary AS
            SELECT model_key, task, COUNT(*) AS n, 100.0 * AVG(subem) AS subem, AVG(n_tokens) AS mean_tokens
            FROM evals GROUP BY model_key, task;
        """,
    ),
    (
        "0002_diagnostics",
        """
        CREATE TABLE greedy (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            text TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            UNIQUE (round_id, question_id)
        );
        CREATE TABLE sample_scores (
            sample_id INTEGER NOT NULL REFERENCES samples(id),
            utility TEXT NOT NULL,                        -- embedding | bertscore | rouge-l | random
            score REAL NOT NULL,
            PRIMARY KEY (sample_id, utility)
        );
        CREATE TABLE diagnostics (
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            utility TEXT NOT NULL,                        -- '-' for metrics that do not depend on a utility
            metric TEXT NOT NULL,                         -- greedy | random_sample | mean_sample | oracle | mbr | chosen | rejected
            value REAL NOT NULL,                          -- SubEM in percent
            n INTEGER NOT NULL,                           -- questions it is computed over
            PRIMARY KEY (round_id, utility, metric)
        );
        """,
    ),
    (
        "0003_eval_truncation",
        """
        ALTER TABLE evals ADD COLUMN prompt_tokens INTEGER;
        ALTER TABLE evals ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        "0004_progress_phase",
        """
        -- when the current progress unit (questions, greedy, steps, ...) began, and how much of it was done
        -- then (a resumed stage starts with some done): the monitor's rate and ETA are over this phase only
        ALTER TABLE stages ADD COLUMN progress_since REAL;
        ALTER TABLE stages ADD COLUMN progress_since_done REAL NOT NULL DEFAULT 0;
        """,
    ),
    (
        "0005_read_indexes",
        """
        -- covering indexes for what `status --watch` reads every second: at the paper's scale (65,536
        -- samples a round, 20 rounds) a frame took up to 160 ms without them and ~40 ms with them
        CREATE INDEX samples_round_tokens ON samples(round_id, n_tokens, mbr_score);
        CREATE INDEX evals_model_task ON evals(model_key, task, subem, n_tokens);
        """,
    ),
    (
        "0006_pairs_selection",
        """
        -- the selection arm that made each pair ([pairs] selection), and a chosen answer that may be the
        -- round's greedy answer (selection = 'greedy-as-chosen') instead of a sample: SQLite cannot drop
        -- NOT NULL, so the table is rebuilt; pairs from before are the MBR arm of their run's utility
        CREATE TABLE pairs_v6 (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            chosen_sample_id INTEGER REFERENCES samples(id),
            rejected_sample_id INTEGER NOT NULL REFERENCES samples(id),
            chosen_greedy_id INTEGER REFERENCES greedy(id),
            selection TEXT,                               -- NULL: a pair from before this column
            UNIQUE (round_id, question_id),
            CHECK ((chosen_sample_id IS NULL) <> (chosen_greedy_id IS NULL))
        );
        INSERT INTO pairs_v6 (id, round_id, question_id, chosen_sample_id, rejected_sample_id)
            SELECT id, round_id, question_id, chosen_sample_id, rejected_sample_id FROM pairs;
        DROP TABLE pairs;
        ALTER TABLE pairs_v6 RENAME TO pairs;
        """,
    ),
    (
        "0007_question_meta",
        """
        -- your own data (train_source = 'jsonl' / 'folder'): the record's file, line, and every field that
        -- is not its id, question, context or answers, as a JSON object; '{}' for the built-in sources
        ALTER TABLE questions ADD COLUMN meta_json TEXT NOT NULL DEFAULT '{}';
        """,
    ),
    (
        "0008_round_questions",
        """
        -- the training questions of each round, fixed when the round starts (a growing source's pool
        -- changes between rounds; a resumed stage must see the same set): which questions trained which
        -- adapter, and which are new. A round from before this table has no rows: its set is the rotating
        -- slice of the pool it always was (stages/base.py)
        CREATE TABLE round_questions (
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            position INTEGER NOT NULL,                    -- order within the round
            is_new INTEGER NOT NULL,                      -- 1: no earlier round of the run had it
            PRIMARY KEY (round_id, question_id)
        );
        CREATE INDEX round_questions_question ON round_questions(question_id);
        """,
    ),
]
