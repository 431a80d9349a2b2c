//! The report as one self-contained HTML page: a summary, then one card per scenario
//! with an inline SVG chart (per metric: the two medians as bars scaled to the larger,
//! each run as a dot, the ratio and which side is better). No external assets.

use serde_json::Value;

use super::report::{fmt_num, verdict, ROLES};

const COLORS: [&str; 2] = ["#64748b", "#ea580c"];
const CHART_W: f64 = 760.0;
const LABEL_W: f64 = 170.0;
const VALUE_W: f64 = 120.0;
const VERDICT_W: f64 = 180.0;
const BAR_H: f64 = 14.0;
const ROW_H: f64 = 44.0;

/// Escapes text for HTML (and SVG) content and attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn chart(s: &Value, names: [&str; 2]) -> String {
    let empty = Vec::new();
    let metrics = s["metrics"].as_array().unwrap_or(&empty);
    let h = 30.0 + ROW_H * metrics.len() as f64;
    let bar_w = CHART_W - LABEL_W - VALUE_W - VERDICT_W;
    let mut o = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{h}" viewBox="0 0 {CHART_W} {h}" role="img" aria-label="{}">"#,
        esc(s["name"].as_str().unwrap_or(""))
    );
    // Legend.
    for (i, n) in names.iter().enumerate() {
        let x = LABEL_W + i as f64 * 170.0;
        o += &format!(
            r#"<rect x="{x}" y="6" width="12" height="12" rx="2" fill="{}"/><text x="{}" y="16" class="lg">{}</text>"#,
            COLORS[i],
            x + 18.0,
            esc(n)
        );
    }
    for (k, m) in metrics.iter().enumerate() {
        let y0 = 30.0 + ROW_H * k as f64;
        let unit = m["unit"].as_str().unwrap_or("");
        let vals = [m["baseline"].as_f64(), m["candidate"].as_f64()];
        let runs = [&m["baseline_runs"], &m["candidate_runs"]];
        let all_runs = runs
            .iter()
            .flat_map(|r| r.as_array().into_iter().flatten())
            .filter_map(Value::as_f64);
        let max = vals
            .iter()
            .flatten()
            .copied()
            .chain(all_runs)
            .fold(0.0f64, f64::max);
        let better = m["better"].as_str().unwrap_or("");
        o += &format!(
            r#"<text x="0" y="{}" class="ml">{}</text><text x="0" y="{}" class="mu">{} is better</text>"#,
            y0 + 14.0,
            esc(m["label"].as_str().unwrap_or("")),
            y0 + 30.0,
            esc(better)
        );
        for i in 0..2 {
            let y = y0 + 2.0 + i as f64 * (BAR_H + 4.0);
            match vals[i] {
                Some(v) => {
                    let w = if max > 0.0 { bar_w * v / max } else { 0.0 };
                    o += &format!(
                        r#"<rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{BAR_H}" rx="2" fill="{}"><title>{}: {} {unit} (median)</title></rect>"#,
                        COLORS[i],
                        esc(names[i]),
                        fmt_num(v)
                    );
                    o += &format!(
                        r#"<text x="{}" y="{}" class="v">{} {}</text>"#,
                        LABEL_W + bar_w + 6.0,
                        y + 11.0,
                        fmt_num(v),
                        esc(unit)
                    );
                }
                None => {
                    o += &format!(
                        r#"<text x="{LABEL_W}" y="{}" class="na">{}: n/a</text>"#,
                        y + 11.0,
                        esc(names[i])
                    );
                }
            }
            for r in runs[i]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
            {
                if max > 0.0 {
                    o += &format!(
                        r#"<circle cx="{:.1}" cy="{}" r="2.5" class="dot"><title>run: {}</title></circle>"#,
                        LABEL_W + bar_w * r / max,
                        y + BAR_H / 2.0,
                        fmt_num(r)
                    );
                }
            }
        }
        if let Some(r) = m["ratio"].as_f64() {
            o += &format!(
                r#"<text x="{}" y="{}" class="r">×{r:.3}</text><text x="{}" y="{}" class="mu">{}</text>"#,
                CHART_W - VERDICT_W + 10.0,
                y0 + 14.0,
                CHART_W - VERDICT_W + 10.0,
                y0 + 30.0,
                esc(&verdict(r, better))
            );
        }
    }
    o + "</svg>"
}

/// The page.
pub fn page(report: &Value) -> String {
    let names = [
        report["sides"][0]["name"].as_str().unwrap_or("baseline"),
        report["sides"][1]["name"].as_str().unwrap_or("candidate"),
    ];
    let empty = Vec::new();
    let mut body = String::new();
    body += &format!(
        "<h1>chatixia bench compare: {} vs {}</h1>",
        esc(names[0]),
        esc(names[1])
    );
    body += "<table class=\"meta\">";
    for (i, role) in ROLES.iter().enumerate() {
        body += &format!(
            "<tr><th><span class=\"sw\" style=\"background:{}\"></span>{}</th><td>{}</td><td><code>{}</code></td></tr>",
            COLORS[i],
            role,
            esc(names[i]),
            esc(report["sides"][i]["spec"].as_str().unwrap_or(""))
        );
    }
    for (k, label) in [
        ("command", "command"),
        ("started_at", "started"),
        ("rounds", "rounds"),
        ("server_cpus", "server CPUs"),
        ("cases", "cases"),
        ("signaling_server", "signaling server"),
        ("note", "note"),
    ] {
        if let Some(v) = report.get(k).filter(|v| !v.is_null()) {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                v => v.to_string(),
            };
            body += &format!(
                "<tr><th>{label}</th><td colspan=\"2\"><code>{}</code></td></tr>",
                esc(&text)
            );
        }
    }
    body += "</table><p class=\"mu\">Bars are medians over the rounds, dots single runs; ratio = candidate / baseline.</p>";
    for s in report["scenarios"].as_array().unwrap_or(&empty) {
        let status = s["status"].as_str().unwrap_or("");
        body += &format!(
            "<section><h2>{} <span class=\"st {}\">{}</span></h2><p class=\"mu\">{}</p>",
            esc(s["name"].as_str().unwrap_or("")),
            if status == "ok" { "ok" } else { "bad" },
            esc(status),
            esc(s["title"].as_str().unwrap_or(""))
        );
        body += &chart(s, names);
        for (i, role) in ROLES.iter().enumerate() {
            for f in s[role]["failures"].as_array().unwrap_or(&empty) {
                body += &format!(
                    "<p class=\"fail\">{} could not run it (round {}): {}</p>",
                    esc(names[i]),
                    f["round"],
                    esc(f["reason"].as_str().unwrap_or(""))
                );
            }
        }
        body += "</section>";
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>bench compare: {} vs {}</title>
<style>
body{{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:820px;color:#0f172a;background:#f8fafc;padding:0 1rem}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin:0 0 .2rem}}
section{{background:#fff;border:1px solid #e2e8f0;border-radius:10px;padding:1rem 1.2rem;margin:1rem 0;box-shadow:0 1px 2px #0001}}
table.meta th{{text-align:left;padding-right:1rem;white-space:nowrap}} table.meta td{{padding-right:1rem}}
code{{font-size:12px;word-break:break-all}}
.sw{{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}}
.mu{{color:#64748b;font-size:12px}} .fail{{color:#b91c1c}}
.st{{font-size:11px;padding:1px 8px;border-radius:9px;vertical-align:middle}} .st.ok{{background:#dcfce7;color:#166534}} .st.bad{{background:#fee2e2;color:#991b1b}}
svg text{{font:12px system-ui,sans-serif;fill:#0f172a}} svg .ml{{font-weight:600}} svg .mu{{fill:#64748b;font-size:11px}}
svg .v{{font-variant-numeric:tabular-nums}} svg .na{{fill:#b91c1c}} svg .r{{font-weight:700}} svg .lg{{font-size:12px}}
svg .dot{{fill:#0f172a;opacity:.55}}
</style></head><body>
{body}
</body></html>
"#,
        esc(names[0]),
        esc(names[1])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_page_is_self_contained_with_one_chart_per_scenario() {
        let m = |b: Value, c: Value, r: Value| {
            json!({"key": "k", "label": "throughput", "unit": "ops/s", "better": "higher",
                   "baseline": b, "candidate": c, "ratio": r,
                   "baseline_runs": [1.0], "candidate_runs": [2.0]})
        };
        let report = json!({
            "rounds": 1,
            "sides": [{"name": "ref <1>", "spec": "a"}, {"name": "ours", "spec": "b"}],
            "scenarios": [
                {"name": "heartbeat", "title": "t", "status": "ok",
                 "baseline": {"failures": []}, "candidate": {"failures": []},
                 "metrics": [m(json!(1.0), json!(2.0), json!(2.0))]},
                {"name": "storm", "title": "t", "status": "baseline failed",
                 "baseline": {"failures": [{"round": 1, "reason": "EMFILE"}]},
                 "candidate": {"failures": []},
                 "metrics": [m(Value::Null, json!(2.0), Value::Null)]},
            ]
        });
        let p = page(&report);
        assert_eq!(p.matches("<svg").count(), 2);
        assert!(p.contains("ref &lt;1&gt;"));
        assert!(p.contains("candidate 2.00× better"));
        assert!(p.contains("could not run it (round 1): EMFILE"));
        assert!(!p.contains("src=") && !p.contains("href=") && !p.contains("@import"));
    }
}
