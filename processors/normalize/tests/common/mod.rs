//! What normalize's integration tests share: one run's topics and group, and the processor's
//! environment for them.

use nectar_core::config::RawTopics;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::{fresh_changelog, fresh_topics, kafka_config, processor_env, unique};

/// Fresh raw topics, output, de-duplication changelog, DLQ and group.
pub struct Run {
    pub topics: RawTopics,
    pub output: String,
    pub dedup: String,
    pub dlq: String,
    pub group: String,
}

impl Run {
    pub async fn new() -> Self {
        let run = Self {
            topics: fresh_topics().await,
            output: unique("t.events"),
            dedup: fresh_changelog("dedup").await,
            dlq: unique("t.dlq.normalize"),
            group: unique("normalize"),
        };
        ensure_topics(
            &kafka_config(),
            &[TopicSpec::new(&run.output, 3), TopicSpec::new(&run.dlq, 1)],
        )
        .await
        .expect("topics");
        run
    }

    /// The environment of instance `instance`, plus `extra`.
    pub fn env(&self, instance: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut topics = vec![
            ("NECTAR_TOPICS__FORMS", self.topics.forms.as_str()),
            ("NECTAR_TOPICS__WEBHOOKS", self.topics.webhooks.as_str()),
            ("NECTAR_TOPICS__APPS", self.topics.apps.as_str()),
            ("NECTAR_OUTPUT__TOPIC", self.output.as_str()),
            ("NECTAR_DEDUP__CHANGELOG", self.dedup.as_str()),
        ];
        topics.extend_from_slice(extra);
        processor_env(&self.group, instance, &self.dlq, &topics)
    }

    /// The three raw topics.
    pub fn inputs(&self) -> Vec<String> {
        vec![
            self.topics.forms.clone(),
            self.topics.webhooks.clone(),
            self.topics.apps.clone(),
        ]
    }
}
