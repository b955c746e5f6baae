//! Bad configuration is one `ConfigInvalid` error, at load time, naming the key and
//! what was expected.

use alarm_domain::{AlarmToBot, BrokerChannel};
use anybroker::{handler_fn, ErrorKind, MessageRouter, RouterConfig};

fn load_error(toml: &str) -> String {
    let err = RouterConfig::from_toml_str(toml).expect_err("config must be refused");
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    err.to_string()
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for p in parts {
        assert!(
            message.contains(p),
            "error {message:?} should mention {p:?}"
        );
    }
}

const MEMORY: &str = "[brokers.memory]\nkind = \"memory\"\n";

#[test]
fn unknown_broker_name_in_route() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nbroker = \"kafak\"\n"
    ));
    assert_mentions(
        &e,
        &[
            "channels.\"alarm.to.log\".broker",
            "unknown broker \"kafak\"",
            "\"memory\"",
        ],
    );
}

#[test]
fn moving_from_an_unknown_broker() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nbroker = \"memory\"\nmoving_from = \"nats-old\"\n"
    ));
    assert_mentions(
        &e,
        &[
            "channels.\"alarm.to.log\".moving_from",
            "unknown broker \"nats-old\"",
        ],
    );
}

#[test]
fn moving_from_the_broker_it_moves_to() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nbroker = \"memory\"\nmoving_from = \"memory\"\n"
    ));
    assert_mentions(
        &e,
        &[
            "channels.\"alarm.to.log\".moving_from",
            "the broker the channel moves to",
        ],
    );
}

#[test]
fn unknown_default_broker() {
    let e = load_error(&format!("default_broker = \"nope\"\n{MEMORY}"));
    assert_mentions(&e, &["default_broker", "unknown broker \"nope\""]);
}

#[test]
fn unknown_kind() {
    let e = load_error("[brokers.queue]\nkind = \"zeromq\"\n");
    assert_mentions(
        &e,
        &[
            "brokers.queue.kind",
            "unknown kind \"zeromq\"",
            "memory, kafka, redis, rabbitmq, nats",
        ],
    );
}

#[test]
fn missing_kind() {
    let e = load_error("[brokers.queue]\nurl = \"redis://127.0.0.1\"\n");
    assert_mentions(&e, &["brokers.queue.kind", "missing"]);
}

/// Runs in builds without the `redis` feature (`scripts/test` runs this file once
/// without features for that).
#[cfg(not(feature = "redis"))]
#[test]
fn route_to_broker_whose_feature_is_off() {
    let e = load_error(
        "[brokers.redis]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
         [channels.\"alarm.to.log\"]\nbroker = \"redis\"\n",
    );
    assert_mentions(
        &e,
        &[
            "channels.\"alarm.to.log\".broker",
            "cargo feature \"redis\"",
        ],
    );
}

#[cfg(not(feature = "kafka"))]
#[test]
fn route_to_kafka_without_its_feature() {
    let e = load_error(
        "[brokers.kafka]\nkind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         [channels.\"alarm.to.log\"]\nbroker = \"kafka\"\n",
    );
    assert_mentions(
        &e,
        &[
            "channels.\"alarm.to.log\".broker",
            "\"kafka\"",
            "cargo feature \"kafka\"",
        ],
    );
}

#[test]
fn broker_whose_feature_is_off_is_fine_when_nothing_routes_to_it() {
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"memory\"\n{MEMORY}[brokers.kafka]\nkind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n"
    ))
    .unwrap();
    assert_eq!(config.brokers.len(), 2);
}

#[test]
fn unparsable_url() {
    let e = load_error("[brokers.redis]\nkind = \"redis\"\nurl = \"redis://user:hunter2@[::1\"\n");
    assert_mentions(&e, &["brokers.redis.url", "not a valid URL"]);
    assert!(
        !e.contains("hunter2"),
        "the password must not be echoed: {e}"
    );
}

#[test]
fn url_with_wrong_scheme() {
    let e = load_error("[brokers.rabbit]\nkind = \"rabbitmq\"\nurl = \"http://127.0.0.1:5672\"\n");
    assert_mentions(&e, &["brokers.rabbit.url", "amqp://"]);
}

#[test]
fn bad_kafka_bootstrap_servers() {
    let e = load_error("[brokers.k]\nkind = \"kafka\"\nbootstrap_servers = \"localhost\"\n");
    assert_mentions(&e, &["brokers.k.bootstrap_servers", "host:port"]);
}

#[test]
fn kafka_properties_the_backend_owns_are_refused() {
    for table in ["properties", "producer_properties", "consumer_properties"] {
        let e = load_error(&format!(
            "[brokers.k]\nkind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n\
             {table} = {{ \"enable.auto.commit\" = \"true\" }}\n"
        ));
        assert_mentions(
            &e,
            &[
                &format!("brokers.k.{table}.\"enable.auto.commit\""),
                "set by the backend",
            ],
        );
    }
}

#[test]
fn bad_duration() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nbroker = \"memory\"\nretry = {{ initial = \"2 parsecs\" }}\n"
    ));
    assert_mentions(&e, &["channels.\"alarm.to.log\".retry.initial", "parsecs"]);
}

#[test]
fn bad_retry_values() {
    let e = load_error(&format!(
        "{MEMORY}[channels.a]\nbroker = \"memory\"\nretry = {{ attempts = 0 }}\n"
    ));
    assert_mentions(&e, &["channels.a.retry.attempts", "at least 1"]);
}

#[test]
fn unknown_field_at_top_level() {
    let e = load_error(&format!("defualt_broker = \"memory\"\n{MEMORY}"));
    assert_mentions(&e, &["unknown field `defualt_broker`", "default_broker"]);
}

#[test]
fn unknown_field_in_channel() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nbroker = \"memory\"\nretyr = 3\n"
    ));
    assert_mentions(&e, &["channels.\"alarm.to.log\"", "unknown field `retyr`"]);
}

#[test]
fn unknown_field_in_broker() {
    let e = load_error(
        "[brokers.redis]\nkind = \"redis\"\nurl = \"redis://127.0.0.1\"\npasword = \"x\"\n",
    );
    assert_mentions(&e, &["brokers.redis", "unknown field `pasword`"]);
}

#[test]
fn channel_with_no_route_and_no_default() {
    let e = load_error(&format!(
        "{MEMORY}[channels.\"alarm.to.log\"]\nprefetch = 10\n"
    ));
    assert_mentions(
        &e,
        &["channels.\"alarm.to.log\".broker", "no default_broker"],
    );
}

#[tokio::test]
async fn handler_on_channel_with_no_route_and_no_default() {
    let config = RouterConfig::from_toml_str(MEMORY).unwrap();
    let err = MessageRouter::builder(config)
        .handle(
            BrokerChannel::AlarmToBot,
            handler_fn(|_m: AlarmToBot, _cx| async { Ok(()) }),
        )
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    assert_mentions(
        &err.to_string(),
        &["alarm.to.bot", "no route", "default_broker"],
    );
}

#[tokio::test]
async fn declared_channels_must_all_be_routable_and_known() {
    let config = RouterConfig::from_toml_str(&format!(
        "{MEMORY}[channels.\"alarm.to.bot\"]\nbroker = \"memory\"\n"
    ))
    .unwrap();
    let err = MessageRouter::builder(config)
        .channels::<BrokerChannel>()
        .start()
        .await
        .unwrap_err();
    assert_mentions(&err.to_string(), &["alarm.to.log", "no route"]);

    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"memory\"\n{MEMORY}[channels.\"alarm.to.lgo\"]\nbroker = \"memory\"\n"
    ))
    .unwrap();
    let err = MessageRouter::builder(config)
        .channels::<BrokerChannel>()
        .start()
        .await
        .unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            "alarm.to.lgo",
            "not a channel of this application",
            "alarm.to.log",
        ],
    );
}

/// Pattern tables give settings to channels named at run time: they sit beside a
/// declared set, the longest matching prefix wins over a shorter one, a channel's own
/// table over both, and `*` anywhere but at the end is refused.
#[tokio::test]
async fn channel_patterns_match_by_longest_prefix() {
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"memory\"\n{MEMORY}\
         [channels.\"orders.*\"]\nprefetch = 8\n\
         [channels.\"orders.eu.*\"]\nprefetch = 16\n\
         [channels.\"orders.eu.acme\"]\nprefetch = 32\n"
    ))
    .unwrap();
    assert_eq!(config.prefetch_for("orders.us.acme"), 8);
    assert_eq!(config.prefetch_for("orders.eu.other"), 16);
    assert_eq!(
        config.prefetch_for("Orders-EU-Other"),
        16,
        "names match as keys do"
    );
    assert_eq!(config.prefetch_for("orders.eu.acme"), 32);
    assert_eq!(
        config.prefetch_for("invoices.acme"),
        config.defaults.prefetch,
        "the default"
    );
    // The declared channels' check does not take a pattern for an unknown channel.
    let config = RouterConfig::from_toml_str(&format!(
        "default_broker = \"memory\"\n{MEMORY}[channels.\"alarm.*\"]\nprefetch = 8\n"
    ))
    .unwrap();
    MessageRouter::builder(config)
        .channels::<BrokerChannel>()
        .start()
        .await
        .unwrap();

    let e = load_error(&format!(
        "default_broker = \"memory\"\n{MEMORY}[channels.\"orders.*.eu\"]\nprefetch = 8\n"
    ));
    assert_mentions(&e, &["channels.\"orders.*.eu\"", "'*' may only end"]);
}

/// A handler's own settings are checked as config is, naming the handler's channel;
/// the members of one group cannot have two retry policies.
#[tokio::test]
async fn handler_options_are_checked_like_config() {
    use anybroker::{HandlerOptions, RetryPolicy};
    let config =
        || RouterConfig::from_toml_str(&format!("default_broker = \"memory\"\n{MEMORY}")).unwrap();
    let handler = || handler_fn(|_m: AlarmToBot, _cx| async { Ok(()) });
    let start = |options: HandlerOptions| {
        MessageRouter::builder(config())
            .handle_with(BrokerChannel::AlarmToBot, handler(), options)
            .start()
    };
    for (options, wanted) in [
        (
            HandlerOptions::new().prefetch(0),
            "prefetch: expected at least 1",
        ),
        (
            HandlerOptions::new().consumers(0),
            "consumers: expected at least 1",
        ),
        (
            HandlerOptions::new().retry(RetryPolicy::new(0)),
            "retry.attempts",
        ),
    ] {
        let err = start(options).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
        assert_mentions(
            &err.to_string(),
            &["handler options of \"alarm.to.bot\"", wanted],
        );
    }

    // Handlers of one channel, each in a group with a retry policy of so many attempts.
    let start_groups = |groups: &[(&str, u32)]| {
        let builder =
            groups
                .iter()
                .fold(MessageRouter::builder(config()), |b, &(group, attempts)| {
                    b.handle_with(
                        BrokerChannel::AlarmToBot,
                        handler(),
                        HandlerOptions::new()
                            .group(group)
                            .retry(RetryPolicy::new(attempts)),
                    )
                });
        builder.start()
    };
    let err = start_groups(&[("g", 2), ("g", 5)]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid, "{err}");
    assert_mentions(&err.to_string(), &["group \"g\"", "another retry policy"]);
    // The same policy in one group, or two policies in two groups, start.
    let router = start_groups(&[("g", 2), ("g", 2), ("h", 5)]).await.unwrap();
    router.shutdown().await.unwrap();
}

/// An id the publisher chose is one every backend can carry, or the publish fails
/// naming what is wrong, before anything is sent.
#[tokio::test]
async fn a_publisher_chosen_id_is_checked() {
    use anybroker::PublishOptions;
    let config =
        RouterConfig::from_toml_str(&format!("default_broker = \"memory\"\n{MEMORY}")).unwrap();
    let router = MessageRouter::builder(config).start().await.unwrap();
    let alarm = AlarmToBot {
        message: "disk full".into(),
    };
    for id in [String::new(), "x".repeat(256), "line\nbreak".into()] {
        let err = router
            .publish_with(
                BrokerChannel::AlarmToBot,
                &alarm,
                PublishOptions::new().id(id),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        assert_mentions(
            &err.to_string(),
            &["message id", "1 to 255 bytes", "alarm.to.bot"],
        );
    }
    router
        .publish_with(
            BrokerChannel::AlarmToBot,
            &alarm,
            PublishOptions::new().id("x".repeat(255)),
        )
        .await
        .unwrap();
}

#[test]
fn not_toml() {
    let e = load_error("default_broker = ");
    assert_mentions(&e, &["not valid TOML"]);
}

#[test]
fn missing_file_names_the_path() {
    let err = MessageRouter::from_config("/nonexistent/anybroker.toml").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    assert_mentions(&err.to_string(), &["/nonexistent/anybroker.toml"]);
}

#[test]
fn env_overrides_move_a_channel_and_set_values() {
    let text = format!(
        "default_broker = \"memory\"\n{MEMORY}[brokers.other]\nkind = \"memory\"\n\
         [channels.\"alarm.to.log\"]\nbroker = \"memory\"\n"
    );
    let vars = [
        ("ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER", "other"),
        ("ANYBROKER_CHANNELS__ALARM_TO_LOG__RETRY__ATTEMPTS", "5"),
        ("ANYBROKER_CHANNELS__ALARM_TO_BOT__PREFETCH", "32"),
        ("ANYBROKER_DEFAULTS__RETRY__INITIAL", "250ms"),
        ("UNRELATED", "x"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let config = RouterConfig::from_toml_with_env(&text, vars).unwrap();
    assert_eq!(config.broker_for("alarm.to.log").unwrap(), "other");
    assert_eq!(config.retry_for("alarm.to.log").attempts, 5);
    assert_eq!(config.prefetch_for("alarm.to.bot"), 32);
    assert_eq!(config.broker_for("alarm.to.bot").unwrap(), "memory");
    assert_eq!(
        config.retry_for("alarm.to.bot").initial,
        std::time::Duration::from_millis(250)
    );
}

#[test]
fn env_override_errors_name_the_variable() {
    let vars = [(
        "ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER".to_string(),
        "nope".to_string(),
    )];
    let err = RouterConfig::from_toml_with_env(MEMORY, vars).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            "alarm_to_log",
            "unknown broker \"nope\"",
            "environment variable ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER",
        ],
    );
}

/// A value of the wrong type set by a variable: the error names the variable.
#[test]
fn env_override_of_the_wrong_type_names_the_variable() {
    let vars = [(
        "ANYBROKER_DEFAULTS__PREFETCH".to_string(),
        "many".to_string(),
    )];
    let err = RouterConfig::from_toml_with_env(MEMORY, vars).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            "defaults.prefetch",
            "environment variable ANYBROKER_DEFAULTS__PREFETCH",
        ],
    );
}

/// A variable with the prefix that names no config key (a tool's own setting, say) is
/// an error naming it and the keys a variable can set, not an "unknown field" of the
/// file.
#[test]
fn env_variable_that_is_no_config_key_is_named() {
    let vars = [("ANYBROKER_TEST_FEATURES".to_string(), "redis".to_string())];
    let err = RouterConfig::from_toml_with_env(MEMORY, vars).unwrap_err();
    assert_mentions(
        &err.to_string(),
        &[
            "environment variable ANYBROKER_TEST_FEATURES",
            "ANYBROKER_CHANNELS",
            "ANYBROKER_BROKERS",
        ],
    );
}

/// Brokers whose config holds a secret of every kind: URL passwords, a token, Kafka
/// secret properties, beside harmless Kafka properties.
const WITH_SECRETS: &str =
    "[brokers.redis]\nkind = \"redis\"\nurl = \"redis://user:s3cr3t@127.0.0.1:6379/0\"\n\
     [brokers.r]\nkind = \"rabbitmq\"\nurl = \"amqp://guest:s3cr3t@127.0.0.1:5672/%2f\"\n\
     [brokers.n]\nkind = \"nats\"\nurl = \"nats://u:s3cr3t@127.0.0.1:4222\"\ntoken = \"s3cr3t\"\n\
     [brokers.k]\nkind = \"kafka\"\nbootstrap_servers = \"127.0.0.1:9092\"\n\
     properties = { \"sasl.password\" = \"s3cr3t\", \"security.protocol\" = \"SASL_SSL\" }\n\
     producer_properties = { \"ssl.key.password\" = \"s3cr3t\", \"compression.type\" = \"zstd\" }\n\
     consumer_properties = { \"sasl.oauthbearer.client.secret\" = \"s3cr3t\" }\n";

/// Serialized config (to TOML, to JSON) writes no secret in clear, and keeps what is
/// not secret.
#[test]
fn secrets_never_in_serialized_config() {
    let config = RouterConfig::from_toml_str(WITH_SECRETS).unwrap();
    for (format, text) in [
        ("toml", toml::to_string(&config).unwrap()),
        ("json", serde_json::to_string(&config).unwrap()),
    ] {
        assert!(!text.contains("s3cr3t"), "{format}: {text}");
        for kept in ["user:***@127.0.0.1", "sasl.password", "SASL_SSL", "zstd"] {
            assert!(text.contains(kept), "{format} lacks {kept:?}: {text}");
        }
    }
}

#[test]
fn secrets_never_in_debug_output() {
    let config = RouterConfig::from_toml_str(WITH_SECRETS).unwrap();
    let debug = format!("{config:?}");
    // Harmless property values stay readable; only secrets are hidden.
    for shown in ["SASL_SSL", "zstd"] {
        assert!(debug.contains(shown), "{shown:?} hidden: {debug}");
    }
    assert!(!debug.contains("s3cr3t"), "{debug}");
    for name in [
        "sasl.password",
        "ssl.key.password",
        "sasl.oauthbearer.client.secret",
    ] {
        assert!(debug.contains(name), "property names stay visible: {debug}");
    }
}

/// The router's config as a field of an application's own config, read by serde: the
/// same checks, the message naming the key within it.
#[test]
fn config_inside_an_application_config() {
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct AppConfig {
        name: String,
        messaging: RouterConfig,
    }
    let app: AppConfig = toml::from_str(
        "name = \"alarms\"\n[messaging]\ndefault_broker = \"memory\"\n\
         [messaging.defaults]\nretry = { initial = \"20s\", max = \"5m\" }\n\
         [messaging.brokers.memory]\nkind = \"memory\"\n\
         [messaging.channels.x]\nretry = { attempts = 6 }\n",
    )
    .unwrap();
    let retry = app.messaging.retry_for("x");
    assert_eq!((retry.attempts, retry.initial.as_secs()), (6, 20));

    let err = toml::from_str::<AppConfig>(
        "name = \"alarms\"\n[messaging]\ndefault_broker = \"kafak\"\n\
         [messaging.brokers.memory]\nkind = \"memory\"\n",
    )
    .unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["messaging", "default_broker", "unknown broker \"kafak\""],
    );
    let json = serde_json::json!({
        "name": "alarms",
        "messaging": { "brokers": { "r": { "kind": "redis", "url": "redis://x:6379", "max_len": 0 } } }
    });
    let err = serde_json::from_value::<AppConfig>(json).unwrap_err();
    assert_mentions(&err.to_string(), &["brokers.r", "max_len"]);
}

/// Backend configs built in code, without a file: checked when the router starts,
/// with the same messages.
#[tokio::test]
async fn configs_built_in_code() {
    use anybroker::kafka::KafkaConfig;
    use anybroker::redis::RedisConfig;
    use anybroker::{BrokerConfig, MessageRouter, SecretUrl};
    let redis = RedisConfig::new(SecretUrl::parse("redis://127.0.0.1:6379").unwrap());
    let mut kafka = KafkaConfig::new("127.0.0.1:9092");
    kafka.partitions = 3;
    // This build has neither backend: configured but unrouted is fine, as in a file.
    let config = RouterConfig::new()
        .with_broker("redis", BrokerConfig::Redis(redis))
        .with_broker("kafka", BrokerConfig::Kafka(kafka))
        .with_broker("memory", BrokerConfig::Memory(Default::default()))
        .with_default_broker("memory");
    config.validate().unwrap();
    MessageRouter::builder(config).start().await.unwrap();

    let unroutable = RouterConfig::new().with_default_broker("nowhere");
    let err = MessageRouter::builder(unroutable)
        .start()
        .await
        .unwrap_err();
    assert_mentions(
        &err.to_string(),
        &["default_broker", "unknown broker \"nowhere\""],
    );
}

/// The README's configuration reference is a valid config: every key it lists exists
/// (configs refuse unknown keys) and every value it shows is accepted.
#[test]
fn readme_configuration_reference_is_a_valid_config() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("the README has a configuration reference");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the reference opens with a TOML block");
    // The TLS files it names, made here (validation checks they can be read).
    let dir = std::env::temp_dir().join(format!("anybroker-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut block = block.to_string();
    for file in ["ca.pem", "client.pem", "client-key.pem"] {
        let path = dir.join(file);
        std::fs::write(&path, "not read").unwrap();
        block = block.replace(
            &format!("\"{file}\""),
            &format!("{:?}", path.display().to_string()),
        );
    }
    let parsed = RouterConfig::from_toml_str(&block);
    std::fs::remove_dir_all(&dir).unwrap();
    match parsed {
        Ok(config) => assert!(anybroker::BrokerKind::Kafka.is_built(), "{config:?}"),
        // Its channel goes to Kafka: a build without the feature refuses that route only.
        Err(e) => assert_mentions(&e.to_string(), &["alarm.to.log", "cargo feature \"kafka\""]),
    }
}

/// The README's minimal config ("Add it") is a valid config.
#[test]
fn readme_minimal_config_is_valid() {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Add it")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has an Add it section");
    let block = section
        .split("```toml\n")
        .find(|b| b.starts_with("default_broker"))
        .and_then(|b| b.split("\n```").next())
        .expect("Add it shows a config file");
    match RouterConfig::from_toml_str(block) {
        Ok(config) => assert!(anybroker::BrokerKind::Redis.is_built(), "{config:?}"),
        Err(e) => assert_mentions(&e.to_string(), &["alarm.to.log", "cargo feature \"redis\""]),
    }
}
