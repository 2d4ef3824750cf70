//! Topic templates such as `sensors/{site}/{sensor}`: each `{name}` matches one topic level,
//! every other level must match literally. The sensor key is the matched levels joined by '/'.

/// Longest sensor key the daemon takes, in bytes; a topic whose key is longer is refused at
/// ingest and counted (`oversized_keys`). The key becomes the last levels of every outgoing
/// topic (`<prefix>/<node>/anomaly/<key>`, `…/code/<key>`, `…/nodata/<key>`), whose length MQTT
/// writes as a u16: without a bound, a topic of ~65 500 bytes would make those longer than
/// 65 535 bytes, which rumqttc truncates silently (a garbage retained message on a wrong topic,
/// then a reconnect loop). 256 bytes holds any `site/device/sensor` hierarchy with room to
/// spare, keeps log lines, checkpoints and metrics labels small, and leaves the prefix and node
/// id almost all of the 65 535.
pub const MAX_KEY_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Field,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    levels: Vec<Level>,
}

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut names: Vec<&str> = vec![];
        let mut levels = vec![];
        for level in template.split('/') {
            if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
                if name.is_empty() || name.contains(['{', '}']) {
                    return Err(format!("bad placeholder {level:?}"));
                }
                if names.contains(&name) {
                    return Err(format!("placeholder {{{name}}} appears twice"));
                }
                names.push(name);
                levels.push(Level::Field);
            } else if level.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "level {level:?} must be a literal or a whole {{name}} placeholder"
                ));
            } else {
                levels.push(Level::Literal(level.to_string()));
            }
        }
        if names.is_empty() {
            return Err("needs at least one {name} placeholder to build the sensor key".into());
        }
        Ok(Self { levels })
    }

    /// The sensor key of `topic`, or `None` when the topic does not have the template's shape.
    pub fn key(&self, topic: &str) -> Option<String> {
        let mut key = String::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            let part = parts.next()?;
            match level {
                Level::Literal(lit) if lit == part => {}
                Level::Literal(_) => return None,
                Level::Field => {
                    if part.is_empty() {
                        return None;
                    }
                    if !key.is_empty() {
                        key.push('/');
                    }
                    key.push_str(part);
                }
            }
        }
        parts.next().is_none().then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_keys_and_refuses_other_shapes() {
        let t = TopicTemplate::parse("sensors/{site}/{sensor}").unwrap();
        assert_eq!(
            t.key("sensors/plant1/pump3").as_deref(),
            Some("plant1/pump3")
        );
        assert_eq!(t.key("sensors/plant1"), None);
        assert_eq!(t.key("sensors/plant1/pump3/x"), None);
        assert_eq!(t.key("other/plant1/pump3"), None);
        assert_eq!(t.key("sensors//pump3"), None);
        let t = TopicTemplate::parse("{device}/telemetry").unwrap();
        assert_eq!(t.key("d1/telemetry").as_deref(), Some("d1"));
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "sensors/+",
            "sensors/#",
            "a/b",
            "a/{x}/{x}",
            "a/{}",
            "a/x{y}",
        ] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Template-ish text: levels of literals, placeholders, wildcards and stray braces.
        fn template_text() -> impl Strategy<Value = String> {
            let level = prop_oneof![
                "[a-c]{0,3}",
                "\\{[a-c]{0,2}\\}",
                Just("+".to_string()),
                Just("#".to_string()),
                "[a-c{}+#/ ]{0,4}",
            ];
            prop::collection::vec(level, 0..6).prop_map(|l| l.join("/"))
        }

        /// One topic level as a publisher might send it (no '/'), possibly empty.
        fn level() -> impl Strategy<Value = String> {
            prop_oneof!["[a-c]{0,3}", "[^/]{0,4}", Just("{x}".to_string())]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

            /// Any text parses or is refused with a reason; any topic matches or not; never a
            /// panic. What matches has as many key levels as the template has placeholders.
            #[test]
            fn arbitrary_templates_and_topics_never_panic(t in template_text(), topic in "[a-c{}+#/]{0,12}") {
                match TopicTemplate::parse(&t) {
                    Err(reason) => prop_assert!(!reason.is_empty()),
                    Ok(tpl) => {
                        let fields = tpl.levels.iter().filter(|l| matches!(l, Level::Field)).count();
                        prop_assert!(fields >= 1);
                        if let Some(key) = tpl.key(&topic) {
                            prop_assert_eq!(key.split('/').count(), fields);
                            prop_assert!(key.split('/').all(|p| !p.is_empty()));
                        }
                    }
                }
            }

            /// Filling a valid template's placeholders with non-empty levels gives back exactly
            /// those levels as the key; changing a literal level, or adding or removing a level,
            /// makes the topic not match.
            #[test]
            fn filled_templates_round_trip(t in template_text(), fill in prop::collection::vec(level(), 6), extra in level()) {
                let Ok(tpl) = TopicTemplate::parse(&t) else { return Ok(()) };
                let mut parts = vec![];
                let mut key = vec![];
                let mut fills = fill.iter().map(|f| if f.is_empty() { "x" } else { f.as_str() });
                for l in &tpl.levels {
                    match l {
                        Level::Literal(lit) => parts.push(lit.clone()),
                        Level::Field => {
                            let f = fills.next().unwrap_or("x").to_string();
                            key.push(f.clone());
                            parts.push(f);
                        }
                    }
                }
                let topic = parts.join("/");
                prop_assert_eq!(tpl.key(&topic), Some(key.join("/")));
                prop_assert_eq!(tpl.key(&format!("{topic}/{extra}")), None);
                if let Some((short, _)) = topic.rsplit_once('/') {
                    prop_assert_eq!(tpl.key(short), None);
                }
                if let Some(i) = tpl.levels.iter().position(|l| matches!(l, Level::Literal(_))) {
                    let mut changed = parts.clone();
                    changed[i].push('~');
                    prop_assert_eq!(tpl.key(&changed.join("/")), None);
                }
            }
        }
    }
}
