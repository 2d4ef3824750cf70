//! Topic templates such as `sensors/{site}/{sensor}`: each `{name}` matches one topic level,
//! every other level must match literally. The sensor key is the matched levels joined by '/'.

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
}
