//! A [`Status`] three ways: JSON for programs, Prometheus text for
//! monitoring, an HTML page for people.
//!
//! Every renderer is a pure function of the status, and every string taken
//! from it is escaped for where it goes: label values in the metrics, text
//! and attributes in the page. The page needs nothing but the HTML (no
//! script, no stylesheet or font to fetch) and refreshes itself.
//!
//! Architecture invariant: rendering knows nothing about the database or
//! about HTTP; the agent fills the status and the server serves the text.

use std::collections::{BTreeSet, HashSet};
use std::fmt::{self, Display, Write as _};

use super::status::{
    AgentStatus, ConsumerStatus, JobStatus, RunStatus, Status, WorkerStatus, AGENT_STATES,
    RUN_STATES,
};

/// How many characters of a run's detail the page shows (the JSON has all
/// of it).
const DETAIL_CHARS: usize = 1000;

/// The status as pretty-printed JSON, ending with a newline.
pub fn json(status: &Status) -> String {
    match serde_json::to_string_pretty(status) {
        Ok(mut text) => {
            text.push('\n');
            text
        }
        // Serialising plain structs with string keys does not fail; should
        // it ever, the reader still gets JSON that says so.
        Err(e) => format!("{}\n", serde_json::json!({ "error": e.to_string() })),
    }
}

/// The status as Prometheus metrics, in the text exposition format 0.0.4.
///
/// Every family has its `# HELP` and `# TYPE` lines, even when it has no
/// samples. When two samples of a family would carry the same labels (two
/// agents of the same name and state, say) only the first is kept, the
/// agent with the newest heartbeat: a scrape with duplicate series fails
/// as a whole.
///
/// The families:
/// - `oplog_ready`: 1 when this agent is ready, else 0.
/// - `oplog_agents{state}`: agents by state (every state, 0 when none).
/// - `oplog_agent_heartbeat_age_seconds{agent,state}`.
/// - `oplog_worker_entries_total{worker,kind}`: entries handed over in this
///   agent since it started.
/// - `oplog_worker_held{worker,kind}`: 1 when some agent holds the worker.
/// - `oplog_consumer_behind_entries{consumer}`,
///   `oplog_consumer_behind_aggregates{consumer}`,
///   `oplog_consumer_oldest_seconds{consumer}`,
///   `oplog_consumer_parked{consumer}`, `oplog_consumer_stalled{consumer}`.
/// - `oplog_consumer_lag_entries{consumer,aggregate}` and
///   `oplog_consumer_lag_seconds{consumer,aggregate}`: the aggregates the
///   status lists for the consumer.
/// - `oplog_job_runs_total{job,state}`: runs in the run log by state
///   (every state, 0 when none).
/// - `oplog_job_last_run_state{job,state}`: 1 for the state of the job's
///   newest run, 0 for the others (nothing for a job without runs).
/// - `oplog_job_last_verify_findings{job}`: the findings of the job's
///   newest finished run, when its detail holds `"findings"`.
/// - `oplog_job_next_due_timestamp_seconds{job}`: when the next run is due,
///   in seconds since the Unix epoch, when that is known and parses.
pub fn metrics(status: &Status) -> String {
    let mut m = Exposition::default();

    m.family(
        "oplog_ready",
        Gauge,
        "Whether this agent is ready (1) or not (0).",
    );
    m.sample(&[], u8::from(status.ready));

    m.family(
        "oplog_agents",
        Gauge,
        "Agents registered on the source, by state.",
    );
    let states = status.agents.iter().map(|a| a.state.as_str());
    for state in with_extra_states(&AGENT_STATES, states) {
        let n = status.agents.iter().filter(|a| a.state == state).count();
        m.sample(&[("state", state)], n);
    }

    m.family(
        "oplog_agent_heartbeat_age_seconds",
        Gauge,
        "Seconds since the agent last reported itself alive.",
    );
    let mut agents: Vec<&AgentStatus> = status.agents.iter().collect();
    agents.sort_by(|a, b| a.heartbeat_age_s.total_cmp(&b.heartbeat_age_s));
    for a in agents {
        let labels = [("agent", a.name.as_str()), ("state", a.state.as_str())];
        m.sample(&labels, Float(a.heartbeat_age_s));
    }

    m.family(
        "oplog_worker_entries_total",
        Counter,
        "Entries the worker handed over in this agent since it started.",
    );
    for w in &status.workers {
        m.sample(&[("worker", &w.name), ("kind", &w.kind)], w.entries);
    }
    m.family(
        "oplog_worker_held",
        Gauge,
        "Whether some agent holds the worker (1) or none does (0).",
    );
    for w in &status.workers {
        let held = u8::from(w.held_by.is_some());
        m.sample(&[("worker", &w.name), ("kind", &w.kind)], held);
    }

    m.per_consumer(
        status,
        "oplog_consumer_behind_entries",
        "Entries the consumer has not acknowledged.",
        |c| c.entries_behind,
    );
    m.per_consumer(
        status,
        "oplog_consumer_behind_aggregates",
        "Aggregates with entries the consumer has not acknowledged.",
        |c| c.aggregates_behind,
    );
    m.per_consumer(
        status,
        "oplog_consumer_oldest_seconds",
        "Seconds the consumer's oldest entry not yet acknowledged has waited.",
        |c| Float(c.oldest_seconds),
    );
    m.per_consumer(
        status,
        "oplog_consumer_parked",
        "Aggregates parked for the consumer.",
        |c| c.parked,
    );
    m.per_consumer(
        status,
        "oplog_consumer_stalled",
        "Whether the consumer has not reported itself alive for too long (1) or has (0).",
        |c| u8::from(c.stalled),
    );

    m.family(
        "oplog_consumer_lag_entries",
        Gauge,
        "Entries of the aggregate the consumer has not acknowledged.",
    );
    for c in &status.consumers {
        for l in &c.lag {
            m.sample(
                &[("consumer", &c.name), ("aggregate", &l.aggregate)],
                l.entries,
            );
        }
    }
    m.family(
        "oplog_consumer_lag_seconds",
        Gauge,
        "Seconds the aggregate's oldest entry not yet acknowledged has waited.",
    );
    for c in &status.consumers {
        for l in &c.lag {
            let labels = [
                ("consumer", c.name.as_str()),
                ("aggregate", l.aggregate.as_str()),
            ];
            m.sample(&labels, Float(l.seconds));
        }
    }

    m.family(
        "oplog_job_runs_total",
        Counter,
        "Runs of the job in the run log, by state.",
    );
    for job in &status.jobs {
        let states = job.run_counts.keys().map(String::as_str);
        for state in with_extra_states(&RUN_STATES, states) {
            let n = job.run_counts.get(state).copied().unwrap_or(0);
            m.sample(&[("job", &job.name), ("state", state)], n);
        }
    }

    m.family(
        "oplog_job_last_run_state",
        Gauge,
        "The state of the job's newest run (1), the other states (0).",
    );
    for job in &status.jobs {
        let Some(newest) = job.last_run() else {
            continue;
        };
        for state in with_extra_states(&RUN_STATES, [newest.state.as_str()]) {
            let is = u8::from(state == newest.state);
            m.sample(&[("job", &job.name), ("state", state)], is);
        }
    }

    m.family(
        "oplog_job_last_verify_findings",
        Gauge,
        "Findings of the job's newest finished run.",
    );
    for job in &status.jobs {
        if let Some(n) = job.last_finished_run().and_then(RunStatus::findings) {
            m.sample(&[("job", &job.name)], n);
        }
    }

    m.family(
        "oplog_job_next_due_timestamp_seconds",
        Gauge,
        "When the job's next run is due, in seconds since the Unix epoch.",
    );
    for job in &status.jobs {
        if let Some(at) = job.next_due.as_deref().and_then(unix_seconds) {
            m.sample(&[("job", &job.name)], Float(at));
        }
    }

    m.out
}

/// The status as a complete HTML page that refreshes itself every five
/// seconds, with neither script nor anything to fetch.
///
/// Every data row carries hooks for tests and for scraping by hand: a class
/// naming what it shows (`agent`, `worker`, `job`, `run`, `consumer`,
/// `lag`) followed by its state or kind, and `data-` attributes with the
/// exact names, for example
/// `<tr class="run failed" data-job="verify" data-state="failed" data-run="7">`.
/// The first paragraph, `<p id="health" class="ready">` or
/// `class="not-ready"`, says whether the agent is ready, and why not.
pub fn page(status: &Status) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<meta http-equiv=\"refresh\" content=\"5\">\n",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        "<title>oplog status</title>\n<style>\n",
    ));
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<h1>oplog status</h1>\n");
    if status.ready {
        out.push_str("<p id=\"health\" class=\"ready\">Ready</p>\n");
    } else {
        let reasons = status.not_ready.join("; ");
        let reasons = if reasons.is_empty() {
            "no reason given"
        } else {
            &reasons
        };
        let _ = writeln!(
            out,
            "<p id=\"health\" class=\"not-ready\">Not ready: {}</p>",
            Html(reasons)
        );
    }
    let _ = writeln!(
        out,
        "<p id=\"generated\">Generated at <time>{}</time>.</p>",
        Html(&status.generated_at)
    );
    agents_section(&mut out, &status.agents);
    workers_section(&mut out, &status.workers);
    jobs_section(&mut out, &status.jobs);
    consumers_section(&mut out, &status.consumers);
    out.push_str("</body>\n</html>\n");
    out
}

/// The page's style sheet: readable tables, and colours for the states that
/// need a look.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.5em;margin:0 0 .5em}
h2{font-size:1.2em;margin:1.5em 0 .5em}
table{border-collapse:collapse;margin-bottom:.5em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.runs,table.lag{margin:0;font-size:.9em}
code{font-size:.9em;white-space:pre-wrap;word-break:break-all}
#health{display:inline-block;padding:.3em .8em;font-weight:bold;border-radius:.3em}
#health.ready{background:#dff0d8;color:#2b542c}
#health.not-ready{background:#f2dede;color:#843534}
#generated{color:#666;font-size:.9em}
p.empty{color:#666;font-style:italic}
tr.this-agent td:first-child{font-weight:bold}
tr.lost,tr.failed,tr.stalled,tr.has-error{background:#fbeaea}
tr.stopped{color:#777}
tr.dropped_out_of_window{background:#fcf8e3}
tr.in_progress{background:#eaf2fb}
span.count{margin-right:.8em;white-space:nowrap}
";

fn agents_section(out: &mut String, agents: &[AgentStatus]) {
    out.push_str("<section id=\"agents\">\n<h2>Agents</h2>\n");
    if agents.is_empty() {
        out.push_str("<p class=\"empty\">No agents.</p>\n</section>\n");
        return;
    }
    out.push_str(concat!(
        "<table>\n<thead><tr><th>Name</th><th>Host</th><th>PID</th><th>Version</th>",
        "<th>State</th><th>Heartbeat age</th><th>Started</th><th>Holds</th></tr></thead>\n<tbody>\n",
    ));
    for a in agents {
        let this = if a.this_agent { " this-agent" } else { "" };
        let _ = writeln!(
            out,
            concat!(
                "<tr class=\"agent {class}{this}\" data-agent=\"{name}\" data-state=\"{state}\">",
                "<td>{name}{marker}</td><td>{host}</td><td class=\"num\">{pid}</td><td>{version}</td>",
                "<td>{state}</td><td class=\"num\" title=\"{heartbeat}\">{age}</td>",
                "<td>{started}</td><td>{holds}</td></tr>",
            ),
            class = ClassToken(&a.state),
            this = this,
            name = Html(&a.name),
            marker = if a.this_agent { " <em>(this agent)</em>" } else { "" },
            host = Html(&a.host),
            pid = a.pid,
            version = Html(&a.version),
            state = Html(&a.state),
            heartbeat = Html(&a.heartbeat_at),
            age = Age(a.heartbeat_age_s),
            started = Html(&a.started_at),
            holds = Html(&a.holds.join(", ")),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn workers_section(out: &mut String, workers: &[WorkerStatus]) {
    out.push_str("<section id=\"workers\">\n<h2>Workers</h2>\n");
    if workers.is_empty() {
        out.push_str("<p class=\"empty\">No workers.</p>\n</section>\n");
        return;
    }
    out.push_str(concat!(
        "<table>\n<thead><tr><th>Name</th><th>Kind</th><th>Held by</th><th>Entries</th>",
        "<th>Last error</th></tr></thead>\n<tbody>\n",
    ));
    for w in workers {
        let _ = writeln!(
            out,
            concat!(
                "<tr class=\"worker {class}{held}{error}\" data-worker=\"{name}\" data-kind=\"{kind}\">",
                "<td>{name}</td><td>{kind}</td><td>{held_by}</td><td class=\"num\">{entries}</td>",
                "<td>{last_error}</td></tr>",
            ),
            class = ClassToken(&w.kind),
            held = if w.held_by.is_some() { " held" } else { " unheld" },
            error = if w.last_error.is_some() { " has-error" } else { "" },
            name = Html(&w.name),
            kind = Html(&w.kind),
            held_by = OrDash(w.held_by.as_deref()),
            entries = w.entries,
            last_error = OrDash(w.last_error.as_deref()),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn jobs_section(out: &mut String, jobs: &[JobStatus]) {
    out.push_str("<section id=\"jobs\">\n<h2>Jobs</h2>\n");
    if jobs.is_empty() {
        out.push_str("<p class=\"empty\">No jobs.</p>\n</section>\n");
        return;
    }
    out.push_str(concat!(
        "<table>\n<thead><tr><th>Name</th><th>Kind</th><th>Schedule</th><th>Window</th>",
        "<th>Next due</th><th>Runs by state</th></tr></thead>\n<tbody>\n",
    ));
    for job in jobs {
        let last = job.last_run().map_or("none", |r| r.state.as_str());
        let _ = write!(
            out,
            concat!(
                "<tr class=\"job {class}\" data-job=\"{name}\" data-last-state=\"{last}\">",
                "<td>{name}</td><td>{kind}</td><td>{schedule}</td><td class=\"num\">{window}</td>",
                "<td>{next_due}</td><td>",
            ),
            class = ClassToken(&job.kind),
            name = Html(&job.name),
            last = Html(last),
            kind = Html(&job.kind),
            schedule = Html(&job.schedule),
            window = Age(job.window_s),
            next_due = OrDash(job.next_due.as_deref()),
        );
        for state in with_extra_states(&RUN_STATES, job.run_counts.keys().map(String::as_str)) {
            let _ = write!(
                out,
                "<span class=\"count {}\" data-state=\"{}\">{}: {}</span>",
                ClassToken(state),
                Html(state),
                Html(state),
                job.run_counts.get(state).copied().unwrap_or(0)
            );
        }
        out.push_str("</td></tr>\n");
        let _ = write!(
            out,
            "<tr class=\"job-runs\" data-job=\"{}\"><td colspan=\"6\">",
            Html(&job.name)
        );
        if job.runs.is_empty() {
            out.push_str("<p class=\"empty\">No runs.</p>");
        } else {
            runs_table(out, &job.name, &job.runs);
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn runs_table(out: &mut String, job: &str, runs: &[RunStatus]) {
    out.push_str(concat!(
        "\n<table class=\"runs\">\n<thead><tr><th>Run</th><th>State</th><th>Agent</th>",
        "<th>Expected</th><th>Started</th><th>Ended</th><th>Detail</th></tr></thead>\n<tbody>\n",
    ));
    for run in runs {
        let detail = if run.detail.is_null() {
            String::new()
        } else {
            truncated(run.detail.to_string(), DETAIL_CHARS)
        };
        let _ = writeln!(
            out,
            concat!(
                "<tr class=\"run {class}\" data-job=\"{job}\" data-state=\"{state}\" data-run=\"{id}\">",
                "<td class=\"num\">{id}</td><td>{state}</td><td>{agent}</td><td>{expected}</td>",
                "<td>{started}</td><td>{ended}</td><td><code>{detail}</code></td></tr>",
            ),
            class = ClassToken(&run.state),
            job = Html(job),
            state = Html(&run.state),
            id = run.id,
            agent = OrDash(run.agent.as_deref()),
            expected = Html(&run.expected_at),
            started = OrDash(run.started_at.as_deref()),
            ended = OrDash(run.ended_at.as_deref()),
            detail = Html(&detail),
        );
    }
    out.push_str("</tbody>\n</table>\n");
}

fn consumers_section(out: &mut String, consumers: &[ConsumerStatus]) {
    out.push_str("<section id=\"consumers\">\n<h2>Consumers</h2>\n");
    if consumers.is_empty() {
        out.push_str("<p class=\"empty\">No consumers.</p>\n</section>\n");
        return;
    }
    out.push_str(concat!(
        "<table>\n<thead><tr><th>Name</th><th>Entries behind</th><th>Aggregates behind</th>",
        "<th>Oldest</th><th>Parked</th><th>Stalled</th><th>Lagging aggregates</th></tr></thead>\n<tbody>\n",
    ));
    for c in consumers {
        let _ = write!(
            out,
            concat!(
                "<tr class=\"consumer{stalled_class}\" data-consumer=\"{name}\">",
                "<td>{name}</td><td class=\"num\">{entries}</td><td class=\"num\">{aggregates}</td>",
                "<td class=\"num\">{oldest}</td><td class=\"num\">{parked}</td><td>{stalled}</td><td>",
            ),
            stalled_class = if c.stalled { " stalled" } else { "" },
            name = Html(&c.name),
            entries = c.entries_behind,
            aggregates = c.aggregates_behind,
            oldest = Age(c.oldest_seconds),
            parked = c.parked,
            stalled = if c.stalled { "yes" } else { "no" },
        );
        if c.lag.is_empty() {
            out.push_str("&ndash;");
        } else {
            out.push_str(concat!(
                "\n<table class=\"lag\">\n<thead><tr><th>Aggregate</th><th>Entries</th>",
                "<th>Oldest</th></tr></thead>\n<tbody>\n",
            ));
            for l in &c.lag {
                let _ = writeln!(
                    out,
                    concat!(
                        "<tr class=\"lag\" data-consumer=\"{consumer}\" data-aggregate=\"{aggregate}\">",
                        "<td>{aggregate}</td><td class=\"num\">{entries}</td><td class=\"num\">{age}</td></tr>",
                    ),
                    consumer = Html(&c.name),
                    aggregate = Html(&l.aggregate),
                    entries = l.entries,
                    age = Age(l.seconds),
                );
            }
            out.push_str("</tbody>\n</table>\n");
        }
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn truncated(mut text: String, max: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(max) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Text escaped for HTML, in an element or in a quoted attribute.
struct Html<'a>(&'a str);

impl Display for Html<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

/// Escaped text, or a dash when there is none.
struct OrDash<'a>(Option<&'a str>);

impl Display for OrDash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(text) => Html(text).fmt(f),
            None => f.write_str("&ndash;"),
        }
    }
}

/// A state or kind as one class name: ASCII letters, digits, `-` and `_`
/// kept, anything else (spaces included) turned into `-`.
struct ClassToken<'a>(&'a str);

impl Display for ClassToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("unknown");
        }
        for c in self.0.chars() {
            let keep = c.is_ascii_alphanumeric() || c == '-' || c == '_';
            f.write_char(if keep { c } else { '-' })?;
        }
        Ok(())
    }
}

/// Seconds as people read them: `4.2 s`, `3 min 12 s`, `2 h 5 min`,
/// `3 d 4 h`.
struct Age(f64);

impl Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if !s.is_finite() || s.abs() < 60.0 {
            return write!(f, "{s:.1} s");
        }
        let sign = if s < 0.0 { "-" } else { "" };
        let s = s.abs().floor();
        let (unit, big_unit, small, small_unit) = if s < 3600.0 {
            (60.0, "min", 1.0, "s")
        } else if s < 86_400.0 {
            (3600.0, "h", 60.0, "min")
        } else {
            (86_400.0, "d", 3600.0, "h")
        };
        let big = (s / unit).floor();
        let rest = (s % unit / small).floor();
        write!(f, "{sign}{big:.0} {big_unit} {rest:.0} {small_unit}")
    }
}

/// Whether a metric family counts or measures.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}
use Kind::{Counter, Gauge};

/// Metrics being written, one family after the other: each family's
/// samples follow its `# HELP` and `# TYPE` lines, each label set once.
#[derive(Default)]
struct Exposition {
    /// The text so far.
    out: String,
    /// The family being written.
    name: &'static str,
    /// The label sets the family has written.
    seen: HashSet<String>,
}

impl Exposition {
    /// Starts a family.
    fn family(&mut self, name: &'static str, kind: Kind, help: &str) {
        let kind = match kind {
            Counter => "counter",
            Gauge => "gauge",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self.name = name;
        self.seen.clear();
    }

    /// Writes one sample of the current family, unless one with the same
    /// labels came before.
    fn sample(&mut self, labels: &[(&str, &str)], value: impl Display) {
        let mut set = String::new();
        if !labels.is_empty() {
            set.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    set.push(',');
                }
                let _ = write!(set, "{name}=\"{}\"", LabelValue(value));
            }
            set.push('}');
        }
        if self.seen.insert(set.clone()) {
            let _ = writeln!(self.out, "{}{set} {value}", self.name);
        }
    }

    /// A gauge family with one sample per consumer.
    fn per_consumer<V: Display>(
        &mut self,
        status: &Status,
        name: &'static str,
        help: &str,
        value: impl Fn(&ConsumerStatus) -> V,
    ) {
        self.family(name, Gauge, help);
        for c in &status.consumers {
            self.sample(&[("consumer", &c.name)], value(c));
        }
    }
}

/// A label value escaped for the text format: backslash, double quote and
/// line feed.
struct LabelValue<'a>(&'a str);

impl Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A sample value as the text format spells floats (`+Inf`, `-Inf`,
/// `NaN`).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

/// The known states in their order, then any other state `seen` names, in
/// alphabetical order.
fn with_extra_states<'a>(
    known: &[&'a str],
    seen: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    let extra: BTreeSet<&str> = seen.into_iter().filter(|s| !known.contains(s)).collect();
    known.iter().copied().chain(extra).collect()
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp in UTC,
/// `YYYY-MM-DDTHH:MM:SS` with an optional fraction and `Z` (or `+00:00`);
/// `None` for anything else.
fn unix_seconds(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, chars: &[u8]| b.get(at).is_some_and(|c| chars.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut fraction = 0.0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        // Nanoseconds: digits past the ninth are below what f64 keeps.
        let (mut nanos, mut scale) = (0u32, 100_000_000u32);
        while let Some(d) = b.get(at).filter(|d| d.is_ascii_digit()) {
            nanos += u32::from(d - b'0') * scale;
            scale /= 10;
            at += 1;
        }
        if at == start {
            return None;
        }
        fraction = f64::from(nanos) / 1e9;
    }
    match &b[at..] {
        b"Z" | b"z" | b"+00:00" | b"-00:00" => {}
        _ => return None,
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    // Exact for every date up to year 9999: well within f64's 53 bits.
    Some(seconds as f64 + fraction)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given day (Howard Hinnant's algorithm,
/// proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::status::LagStatus;
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap};

    fn run(id: i64, job: &str, state: &str, detail: serde_json::Value) -> RunStatus {
        RunStatus {
            id,
            job: job.into(),
            agent: Some("a1".into()),
            expected_at: "2026-03-01T10:00:00Z".into(),
            started_at: Some("2026-03-01T10:00:01Z".into()),
            ended_at: (state != "in_progress").then(|| "2026-03-01T10:00:05Z".into()),
            state: state.into(),
            detail,
            ..RunStatus::default()
        }
    }

    fn sample() -> Status {
        Status {
            generated_at: "2026-03-01T10:00:10Z".into(),
            ready: false,
            not_ready: vec![
                "source unreachable".into(),
                "relay \"nats\" not held".into(),
            ],
            agents: vec![
                AgentStatus {
                    id: "1".into(),
                    name: "a1".into(),
                    host: "db-1".into(),
                    pid: 42,
                    version: "0.1.0".into(),
                    state: "running".into(),
                    heartbeat_age_s: 1.5,
                    holds: vec!["replica".into(), "verify".into()],
                    this_agent: true,
                    ..AgentStatus::default()
                },
                AgentStatus {
                    id: "2".into(),
                    name: "a2".into(),
                    host: "db-2".into(),
                    state: "lost".into(),
                    heartbeat_age_s: 312.0,
                    ..AgentStatus::default()
                },
            ],
            workers: vec![
                WorkerStatus {
                    name: "replica".into(),
                    kind: "follower".into(),
                    held_by: Some("a1".into()),
                    entries: 1234,
                    last_error: None,
                },
                WorkerStatus {
                    name: "nats".into(),
                    kind: "relay".into(),
                    held_by: None,
                    entries: 0,
                    last_error: Some("connection refused <nats:4222>".into()),
                },
            ],
            jobs: vec![
                JobStatus {
                    name: "verify".into(),
                    kind: "verify".into(),
                    schedule: "every 1h".into(),
                    window_s: 600.0,
                    next_due: Some("2026-03-01T11:00:00Z".into()),
                    runs: vec![
                        run(
                            9,
                            "verify",
                            "failed",
                            json!({"error": "timeout", "findings": 2}),
                        ),
                        run(8, "verify", "success", json!({"findings": 0})),
                    ],
                    run_counts: BTreeMap::from([("success".into(), 7), ("failed".into(), 1)]),
                },
                JobStatus {
                    name: "<script>alert(1)</script>".into(),
                    kind: "trim".into(),
                    schedule: "daily".into(),
                    next_due: Some("not a time".into()),
                    runs: vec![run(
                        3,
                        "<script>alert(1)</script>",
                        "in_progress",
                        json!(null),
                    )],
                    ..JobStatus::default()
                },
            ],
            consumers: vec![ConsumerStatus {
                name: "billing".into(),
                stalled: true,
                parked: 1,
                aggregates_behind: 2,
                entries_behind: 30,
                oldest_seconds: 95.25,
                lag: vec![
                    LagStatus {
                        aggregate: "acct\"7\\x\ny".into(),
                        entries: 20,
                        seconds: 95.25,
                    },
                    LagStatus {
                        aggregate: "acct-8".into(),
                        entries: 10,
                        seconds: 3.0,
                    },
                ],
            }],
        }
    }

    /// A sample line: its name, labels and value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// Parses one sample line of the text format, unescaping label values;
    /// `None` when the line does not follow the format.
    fn parse_sample(line: &str) -> Option<Sample> {
        let is_name = |s: &str, colon: bool| {
            let mut chars = s.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
        };
        let end = line.find(['{', ' '])?;
        let name = &line[..end];
        if !is_name(name, true) {
            return None;
        }
        let mut rest = &line[end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            rest = inner;
            loop {
                if let Some(after) = rest.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let eq = rest.find('=')?;
                let label = &rest[..eq];
                if !is_name(label, false) {
                    return None;
                }
                rest = rest[eq + 1..].strip_prefix('"')?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let close = loop {
                    match chars.next()? {
                        (_, '\\') => match chars.next()?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            _ => return None,
                        },
                        (i, '"') => break i,
                        (_, '\n') => return None,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((label.to_string(), value));
                rest = &rest[close + 1..];
                rest = rest.strip_prefix(',').unwrap_or(rest);
            }
        }
        let value = rest.strip_prefix(' ')?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().ok()?,
        };
        Some((name.to_string(), labels, value))
    }

    /// Checks the whole exposition and returns its samples: every line a
    /// comment or a sample, every sample after its family's HELP and TYPE,
    /// each family in one block, no series twice.
    fn parse_metrics(text: &str) -> Vec<Sample> {
        assert!(text.ends_with('\n'), "the exposition ends with a line feed");
        let mut help = HashSet::new();
        let mut types = HashMap::new();
        let mut finished = HashSet::new();
        let mut current: Option<String> = None;
        let mut series = HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let (what, name, rest) = (parts.next(), parts.next().unwrap(), parts.next());
                if current.as_deref() != Some(name) {
                    if let Some(previous) = current.take() {
                        finished.insert(previous);
                    }
                    assert!(!finished.contains(name), "{name} is split: {line}");
                    current = Some(name.to_string());
                }
                match what {
                    Some("HELP") => assert!(help.insert(name.to_string()) && rest.is_some()),
                    Some("TYPE") => {
                        let kind = rest.unwrap();
                        assert!(kind == "gauge" || kind == "counter", "{line}");
                        assert!(types.insert(name.to_string(), kind.to_string()).is_none());
                    }
                    _ => panic!("unexpected comment: {line}"),
                }
                continue;
            }
            let sample = parse_sample(line).unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let name = &sample.0;
            assert_eq!(current.as_deref(), Some(name.as_str()), "{line}");
            assert!(help.contains(name), "no HELP for {line}");
            assert!(types.contains_key(name), "no TYPE for {line}");
            if types[name] == "counter" {
                assert!(name.ends_with("_total"), "{line}");
            }
            assert!(
                series.insert((sample.0.clone(), sample.1.clone())),
                "twice: {line}"
            );
            samples.push(sample);
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples
            .iter()
            .find(|s| s.0 == name && s.1 == labels)
            .map(|s| s.2)
    }

    #[test]
    fn metrics_follow_the_text_format() {
        let samples = parse_metrics(&metrics(&sample()));
        let v = |name, labels: &[(&str, &str)]| value(&samples, name, labels);
        assert_eq!(v("oplog_ready", &[]), Some(0.0));
        assert_eq!(v("oplog_agents", &[("state", "running")]), Some(1.0));
        assert_eq!(v("oplog_agents", &[("state", "lost")]), Some(1.0));
        assert_eq!(v("oplog_agents", &[("state", "stopped")]), Some(0.0));
        let age = "oplog_agent_heartbeat_age_seconds";
        assert_eq!(v(age, &[("agent", "a2"), ("state", "lost")]), Some(312.0));
        let entries = "oplog_worker_entries_total";
        assert_eq!(
            v(entries, &[("worker", "replica"), ("kind", "follower")]),
            Some(1234.0)
        );
        assert_eq!(
            v(
                "oplog_worker_held",
                &[("worker", "nats"), ("kind", "relay")]
            ),
            Some(0.0)
        );
        assert_eq!(
            v(
                "oplog_worker_held",
                &[("worker", "replica"), ("kind", "follower")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("oplog_consumer_behind_entries", &[("consumer", "billing")]),
            Some(30.0)
        );
        assert_eq!(
            v("oplog_consumer_oldest_seconds", &[("consumer", "billing")]),
            Some(95.25)
        );
        assert_eq!(
            v("oplog_consumer_parked", &[("consumer", "billing")]),
            Some(1.0)
        );
        assert_eq!(
            v("oplog_consumer_stalled", &[("consumer", "billing")]),
            Some(1.0)
        );
        let lag = [("consumer", "billing"), ("aggregate", "acct\"7\\x\ny")];
        assert_eq!(v("oplog_consumer_lag_entries", &lag), Some(20.0));
        assert_eq!(v("oplog_consumer_lag_seconds", &lag), Some(95.25));
        let last = "oplog_job_last_run_state";
        assert_eq!(
            v(last, &[("job", "verify"), ("state", "failed")]),
            Some(1.0)
        );
        assert_eq!(
            v(last, &[("job", "verify"), ("state", "success")]),
            Some(0.0)
        );
        let findings = "oplog_job_last_verify_findings";
        assert_eq!(v(findings, &[("job", "verify")]), Some(2.0));
        assert_eq!(v(findings, &[("job", "<script>alert(1)</script>")]), None);
        let due = "oplog_job_next_due_timestamp_seconds";
        assert_eq!(v(due, &[("job", "verify")]), Some(1_772_362_800.0));
        assert_eq!(
            v(due, &[("job", "<script>alert(1)</script>")]),
            None,
            "unparsable"
        );
    }

    #[test]
    fn run_counts_cover_every_state() {
        let samples = parse_metrics(&metrics(&sample()));
        let mut status = sample();
        status.jobs[1].run_counts.insert("paused".into(), 4);
        let with_extra = parse_metrics(&metrics(&status));
        for job in ["verify", "<script>alert(1)</script>"] {
            for state in RUN_STATES {
                let n = value(
                    &samples,
                    "oplog_job_runs_total",
                    &[("job", job), ("state", state)],
                );
                let expected = match (job, state) {
                    ("verify", "success") => 7.0,
                    ("verify", "failed") => 1.0,
                    _ => 0.0,
                };
                assert_eq!(n, Some(expected), "{job} {state}");
            }
        }
        let paused = [("job", "<script>alert(1)</script>"), ("state", "paused")];
        assert_eq!(
            value(&with_extra, "oplog_job_runs_total", &paused),
            Some(4.0)
        );
    }

    #[test]
    fn metric_labels_are_escaped() {
        let text = metrics(&sample());
        assert!(
            text.contains(r#"aggregate="acct\"7\\x\ny"} 20"#),
            "escaped label missing:\n{text}"
        );
        assert_eq!(format!("{}", LabelValue("a\\b\"c\nd")), r#"a\\b\"c\nd"#);
    }

    #[test]
    fn an_empty_status_still_describes_every_family() {
        let text = metrics(&Status::default());
        let samples = parse_metrics(&text);
        assert_eq!(samples.len(), 1 + AGENT_STATES.len(), "{text}");
        assert!(text.contains("# TYPE oplog_job_runs_total counter\n"));
        assert!(text.contains("# TYPE oplog_consumer_lag_seconds gauge\n"));
    }

    #[test]
    fn duplicate_series_keep_the_newest_agent() {
        let mut status = sample();
        let mut old = status.agents[1].clone();
        old.heartbeat_age_s = 9000.0;
        status.agents.insert(0, old);
        let samples = parse_metrics(&metrics(&status));
        let age = [("agent", "a2"), ("state", "lost")];
        assert_eq!(
            value(&samples, "oplog_agent_heartbeat_age_seconds", &age),
            Some(312.0)
        );
        assert_eq!(
            value(&samples, "oplog_agents", &[("state", "lost")]),
            Some(2.0)
        );
    }

    #[test]
    fn special_floats_use_the_formats_spelling() {
        let mut status = sample();
        status.consumers[0].oldest_seconds = f64::INFINITY;
        status.consumers[0].lag[0].seconds = f64::NAN;
        let text = metrics(&status);
        parse_metrics(&text);
        assert!(text.contains("oplog_consumer_oldest_seconds{consumer=\"billing\"} +Inf\n"));
        assert!(text.contains("} NaN\n"));
    }

    #[test]
    fn timestamps_parse_as_rfc3339_in_utc() {
        for (text, seconds) in [
            ("1970-01-01T00:00:00Z", Some(0.0)),
            ("2026-03-01T11:00:00Z", Some(1_772_362_800.0)),
            ("2024-02-29T23:59:59.5Z", Some(1_709_251_199.5)),
            ("2024-02-29T23:59:59.250000+00:00", Some(1_709_251_199.25)),
            ("1969-12-31T23:59:59Z", Some(-1.0)),
            ("2000-01-01 00:00:00z", Some(946_684_800.0)),
            ("2023-02-29T00:00:00Z", None),
            ("2026-13-01T00:00:00Z", None),
            ("2026-01-01T24:00:00Z", None),
            ("2026-01-01T00:00:00", None),
            ("2026-01-01T00:00:00+01:00", None),
            ("2026-01-01T00:00:00.Z", None),
            ("2026-01-01T00:00:00ZZ", None),
            ("2026-01-01", None),
            ("+026-01-01T00:00:00Z", None),
            ("2026-01-0éT00:00:00Z", None),
            ("", None),
        ] {
            assert_eq!(unix_seconds(text), seconds, "{text}");
        }
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let html = page(&sample());
        assert!(!html.contains("<script"), "raw tag in the page");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("data-job=\"&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(html.contains("connection refused &lt;nats:4222&gt;"));
        assert!(html.contains("data-aggregate=\"acct&quot;7\\x\ny\""));
        assert!(html.contains("relay &quot;nats&quot; not held"));
        assert_eq!(Html("&<>\"'x").to_string(), "&amp;&lt;&gt;&quot;&#39;x");
    }

    #[test]
    fn the_page_carries_its_hooks() {
        let html = page(&sample());
        assert!(html.starts_with("<!DOCTYPE html>\n"));
        assert!(html.ends_with("</html>\n"));
        assert!(html.contains("<title>oplog status</title>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains(
            "<p id=\"health\" class=\"not-ready\">Not ready: source unreachable; relay &quot;nats&quot; not held</p>"
        ));
        for hook in [
            "<tr class=\"agent running this-agent\" data-agent=\"a1\" data-state=\"running\">",
            "<tr class=\"agent lost\" data-agent=\"a2\" data-state=\"lost\">",
            "<tr class=\"worker follower held\" data-worker=\"replica\" data-kind=\"follower\">",
            "<tr class=\"worker relay unheld has-error\" data-worker=\"nats\" data-kind=\"relay\">",
            "<tr class=\"job verify\" data-job=\"verify\" data-last-state=\"failed\">",
            "<tr class=\"run failed\" data-job=\"verify\" data-state=\"failed\" data-run=\"9\">",
            "<tr class=\"run success\" data-job=\"verify\" data-state=\"success\" data-run=\"8\">",
            "<tr class=\"consumer stalled\" data-consumer=\"billing\">",
            "<tr class=\"lag\" data-consumer=\"billing\" data-aggregate=\"acct-8\">",
            "<span class=\"count failed\" data-state=\"failed\">failed: 1</span>",
            "<span class=\"count dropped_out_of_window\" data-state=\"dropped_out_of_window\">dropped_out_of_window: 0</span>",
            "<h2>Agents</h2>",
            "<h2>Workers</h2>",
            "<h2>Jobs</h2>",
            "<h2>Consumers</h2>",
            "(this agent)",
            "<code>{&quot;error&quot;:&quot;timeout&quot;,&quot;findings&quot;:2}</code>",
            "5 min 12 s",
        ] {
            assert!(html.contains(hook), "missing {hook}\n{html}");
        }
        assert!(!html.contains("<script") && !html.to_lowercase().contains("javascript"));
    }

    #[test]
    fn a_ready_empty_status_makes_a_page_too() {
        let html = page(&Status {
            ready: true,
            ..Status::default()
        });
        assert!(html.contains("<p id=\"health\" class=\"ready\">Ready</p>"));
        for empty in ["No agents.", "No workers.", "No jobs.", "No consumers."] {
            assert!(html.contains(empty), "{empty}");
        }
    }

    #[test]
    fn class_names_and_ages_are_tidy() {
        assert_eq!(ClassToken("in_progress").to_string(), "in_progress");
        assert_eq!(ClassToken("a b\"<c").to_string(), "a-b--c");
        assert_eq!(ClassToken("").to_string(), "unknown");
        for (s, text) in [
            (4.24, "4.2 s"),
            (59.9, "59.9 s"),
            (192.0, "3 min 12 s"),
            (7500.0, "2 h 5 min"),
            (3.0 * 86_400.0 + 4.0 * 3600.0 + 5.0, "3 d 4 h"),
            (-192.0, "-3 min 12 s"),
            (f64::NAN, "NaN s"),
        ] {
            assert_eq!(Age(s).to_string(), text);
        }
        assert_eq!(truncated("ééé".into(), 2), "éé…");
        assert_eq!(truncated("ééé".into(), 3), "ééé");
    }

    #[test]
    fn json_reads_back() {
        let status = sample();
        let text = json(&status);
        assert!(text.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), status);
    }
}
