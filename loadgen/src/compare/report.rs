//! The comparison's report: per scenario and metric, the median of each side's runs
//! and the ratio candidate / baseline. The JSON value built here is the report; the
//! terminal table and the HTML page ([`super::html`]) are drawn from it.

use serde_json::{json, Value};

use super::scenarios::{Metric, Sample};

/// Which side: 0 = baseline, 1 = candidate.
pub const ROLES: [&str; 2] = ["baseline", "candidate"];

/// One run of one scenario on one side.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub round: usize,
    /// 0 = baseline, 1 = candidate.
    pub side: usize,
    pub outcome: Result<Sample, String>,
    pub wall_s: f64,
}

/// All runs of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioRuns {
    pub name: String,
    pub title: String,
    pub metrics: Vec<Metric>,
    pub runs: Vec<RunResult>,
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// candidate / baseline, when both are known and the baseline is not zero.
pub fn ratio(baseline: Option<f64>, candidate: Option<f64>) -> Option<f64> {
    match (baseline, candidate) {
        (Some(b), Some(c)) if b != 0.0 && b.is_finite() && c.is_finite() => Some(c / b),
        _ => None,
    }
}

fn round_sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let digits = 4 - x.abs().log10().ceil() as i32;
    let m = 10f64.powi(digits.clamp(0, 12));
    (x * m).round() / m
}

/// The scenario's entry of the JSON report.
pub fn scenario_json(s: &ScenarioRuns) -> Value {
    let side_json = |side: usize| {
        let ok = s
            .runs
            .iter()
            .filter(|r| r.side == side && r.outcome.is_ok())
            .count();
        let failures: Vec<Value> = s
            .runs
            .iter()
            .filter(|r| r.side == side)
            .filter_map(|r| match &r.outcome {
                Err(e) => Some(json!({"round": r.round + 1, "reason": e})),
                Ok(_) => None,
            })
            .collect();
        json!({"runs_ok": ok, "failures": failures})
    };
    let values = |side: usize, key: &str| -> Vec<f64> {
        s.runs
            .iter()
            .filter(|r| r.side == side)
            .filter_map(|r| r.outcome.as_ref().ok()?.get(key).copied())
            .collect()
    };
    let metrics: Vec<Value> = s
        .metrics
        .iter()
        .map(|m| {
            let (bv, cv) = (values(0, m.key), values(1, m.key));
            let (b, c) = (median(&bv), median(&cv));
            json!({
                "key": m.key,
                "label": m.label,
                "unit": m.unit,
                "better": m.better.as_str(),
                "baseline": b.map(round_sig),
                "candidate": c.map(round_sig),
                "ratio": ratio(b, c).map(round_sig),
                "baseline_runs": bv.into_iter().map(round_sig).collect::<Vec<_>>(),
                "candidate_runs": cv.into_iter().map(round_sig).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (b, c) = (side_json(0), side_json(1));
    let could = |v: &Value| v["runs_ok"].as_u64().unwrap_or(0) > 0;
    let status = match (could(&b), could(&c)) {
        (true, true) => "ok",
        (false, true) => "baseline failed",
        (true, false) => "candidate failed",
        (false, false) => "both failed",
    };
    json!({
        "name": s.name,
        "title": s.title,
        "status": status,
        "baseline": b,
        "candidate": c,
        "metrics": metrics,
    })
}

/// The whole report; `meta` holds the sides, rounds, command and settings.
pub fn build(meta: Value, scenarios: &[ScenarioRuns]) -> Value {
    let mut r = meta;
    r["kind"] = json!("bench-compare");
    r["ratio"] = json!("candidate / baseline");
    r["scenarios"] = Value::Array(scenarios.iter().map(scenario_json).collect());
    r
}

/// A number for people: 4 significant digits, thousands unseparated.
pub fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// "candidate 2.10× better" / "baseline 1.30× better" / "same (±3%)".
pub fn verdict(ratio: f64, better: &str) -> String {
    let gain = if better == "higher" {
        ratio
    } else {
        1.0 / ratio
    };
    if !gain.is_finite() || gain <= 0.0 {
        "–".into()
    } else if (gain - 1.0).abs() < 0.03 {
        "same (±3%)".into()
    } else if gain > 1.0 {
        format!("candidate {gain:.2}× better")
    } else {
        format!("baseline {:.2}× better", 1.0 / gain)
    }
}

/// The terminal table of medians and ratios.
pub fn table(report: &Value) -> String {
    let names = [
        report["sides"][0]["name"].as_str().unwrap_or("baseline"),
        report["sides"][1]["name"].as_str().unwrap_or("candidate"),
    ];
    let mut rows: Vec<[String; 6]> = vec![[
        "scenario".into(),
        "metric".into(),
        names[0].into(),
        names[1].into(),
        "ratio".into(),
        "".into(),
    ]];
    let empty = Vec::new();
    let mut notes = Vec::new();
    for s in report["scenarios"].as_array().unwrap_or(&empty) {
        let name = s["name"].as_str().unwrap_or("?");
        for (i, role) in ROLES.iter().enumerate() {
            for f in s[role]["failures"].as_array().unwrap_or(&empty) {
                notes.push(format!(
                    "{name}: {} could not run it (round {}): {}",
                    names[i],
                    f["round"],
                    f["reason"].as_str().unwrap_or("?")
                ));
            }
        }
        for (k, m) in s["metrics"].as_array().unwrap_or(&empty).iter().enumerate() {
            let cell = |v: &Value| match v.as_f64() {
                Some(x) => format!("{} {}", fmt_num(x), m["unit"].as_str().unwrap_or("")),
                None => "n/a".into(),
            };
            let (ratio, verdict) = match m["ratio"].as_f64() {
                Some(r) => (
                    format!("{r:.3}"),
                    verdict(r, m["better"].as_str().unwrap_or("")),
                ),
                None => ("–".into(), String::new()),
            };
            rows.push([
                if k == 0 {
                    name.to_owned()
                } else {
                    String::new()
                },
                m["label"].as_str().unwrap_or("?").to_owned(),
                cell(&m["baseline"]),
                cell(&m["candidate"]),
                ratio,
                verdict,
            ]);
        }
    }
    let mut w = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (j, r) in rows.iter().enumerate() {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        );
        out.push_str(line.trim_end());
        out.push('\n');
        if j == 0 {
            out.push_str(&"-".repeat(w.iter().sum::<usize>() + 10));
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "medians of {} round(s); ratio = {} / {}\n",
        report["rounds"], names[1], names[0]
    ));
    for n in notes {
        out.push_str(&format!("! {n}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::scenarios::Better;
    use super::*;

    fn metric(key: &'static str, better: Better) -> Metric {
        Metric {
            key,
            label: key,
            unit: "u",
            better,
        }
    }

    fn sample(pairs: &[(&str, f64)]) -> Sample {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn ratios_and_verdicts() {
        assert_eq!(ratio(Some(2.0), Some(5.0)), Some(2.5));
        assert_eq!(ratio(Some(0.0), Some(5.0)), None);
        assert_eq!(ratio(None, Some(5.0)), None);
        assert_eq!(verdict(2.5, "higher"), "candidate 2.50× better");
        assert_eq!(verdict(2.0, "lower"), "baseline 2.00× better");
        assert_eq!(verdict(0.5, "lower"), "candidate 2.00× better");
        assert_eq!(verdict(1.01, "lower"), "same (±3%)");
    }

    fn runs() -> ScenarioRuns {
        let ok = |round, side, tp, p50| RunResult {
            round,
            side,
            outcome: Ok(sample(&[("tp", tp), ("p50", p50)])),
            wall_s: 1.0,
        };
        ScenarioRuns {
            name: "relay-100".into(),
            title: "t".into(),
            metrics: vec![metric("tp", Better::Higher), metric("p50", Better::Lower)],
            runs: vec![
                ok(0, 0, 100.0, 10.0),
                ok(0, 1, 300.0, 5.0),
                ok(1, 1, 200.0, 4.0),
                ok(1, 0, 120.0, 30.0),
                ok(2, 0, 110.0, 20.0),
                ok(2, 1, 250.0, 6.0),
            ],
        }
    }

    #[test]
    fn scenario_medians_and_ratios() {
        let s = scenario_json(&runs());
        assert_eq!(s["status"], "ok");
        assert_eq!(s["baseline"]["runs_ok"], 3);
        let tp = &s["metrics"][0];
        assert_eq!(tp["baseline"], 110.0);
        assert_eq!(tp["candidate"], 250.0);
        assert_eq!(tp["ratio"], round_sig(250.0 / 110.0));
        assert_eq!(tp["better"], "higher");
        assert_eq!(tp["baseline_runs"], json!([100.0, 120.0, 110.0]));
        let p50 = &s["metrics"][1];
        assert_eq!(p50["baseline"], 20.0);
        assert_eq!(p50["candidate"], 5.0);
        assert_eq!(p50["ratio"], 0.25);
    }

    #[test]
    fn a_side_that_cannot_run_a_scenario_is_reported_with_its_reason() {
        let mut s = runs();
        for r in s.runs.iter_mut().filter(|r| r.side == 0) {
            r.outcome = Err("stopped at 1019 of 10000 connections by EMFILE".into());
        }
        let j = scenario_json(&s);
        assert_eq!(j["status"], "baseline failed");
        assert_eq!(j["baseline"]["runs_ok"], 0);
        assert_eq!(j["baseline"]["failures"].as_array().unwrap().len(), 3);
        assert_eq!(j["baseline"]["failures"][0]["round"], 1);
        assert!(j["baseline"]["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("EMFILE"));
        let tp = &j["metrics"][0];
        assert_eq!(tp["baseline"], Value::Null);
        assert_eq!(tp["candidate"], 250.0);
        assert_eq!(tp["ratio"], Value::Null);
        // One failed run of three: the median is over the two that ran.
        let mut s = runs();
        s.runs[0].outcome = Err("timeout".into());
        let j = scenario_json(&s);
        assert_eq!(j["status"], "ok");
        assert_eq!(j["metrics"][0]["baseline"], 115.0);
        assert_eq!(j["baseline"]["failures"][0]["reason"], "timeout");
    }

    #[test]
    fn the_table_shows_medians_ratios_and_failures() {
        let mut failed = runs();
        failed.name = "connect-idle-10k".into();
        for r in failed.runs.iter_mut().filter(|r| r.side == 0) {
            r.outcome = Err("EMFILE".into());
        }
        let meta = json!({"rounds": 3, "sides": [{"name": "ref"}, {"name": "ours"}]});
        let report = build(meta, &[runs(), failed]);
        assert_eq!(report["kind"], "bench-compare");
        assert_eq!(report["scenarios"].as_array().unwrap().len(), 2);
        let t = table(&report);
        assert!(t.contains("ref") && t.contains("ours"), "{t}");
        assert!(t.contains("relay-100"), "{t}");
        assert!(t.contains("110.0 u") && t.contains("250.0 u"), "{t}");
        assert!(t.contains("candidate 2.27× better"), "{t}");
        assert!(t.contains("n/a"), "{t}");
        assert!(
            t.contains("! connect-idle-10k: ref could not run it (round 1): EMFILE"),
            "{t}"
        );
    }
}
