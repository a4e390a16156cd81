//! `tandem cfg`: the configuration server's client commands — log in, read, query, write,
//! watch notifications, export/import (JSON or YAML), read the audit trail, switch the mode, show status.
//! Tables by default, `--json` for scripts. Field values given as `NAME=VALUE` are typed by the
//! object type's schema (`port=7000` is an integer, `host=3` a reference to host 3).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use tandem_config::document::{Document, TextFormat};
use tandem_config::{schema, ConfigError, ConfigObject, Delta, Grant, ObjectType, PageItems, Query, State, Value};
use tandem_confserv::client::{ClientConfig, ConfClient, SubscribeFilter, WriteResult};
use tandem_confserv::record::{LogRecord, Mode, What};
use tandem_proto::confserv as pb;
use tandem_tls::TlsFiles;

#[derive(Subcommand)]
pub enum CfgCommand {
    /// Log in and keep the session token in the session file (or print it).
    Login(LoginArgs),
    /// Show one object.
    Get(GetArgs),
    /// List objects of one type, with filters.
    Query(QueryArgs),
    /// Create an object.
    Create(CreateArgs),
    /// Change an object: only what is named changes.
    Update(UpdateArgs),
    /// Delete an object (--cascade: with what must go with it).
    Delete(DeleteArgs),
    /// Print notifications as they come (history first with --after).
    Watch(WatchArgs),
    /// Write the configuration (or a folder) as a JSON or YAML document.
    Export(ExportArgs),
    /// Apply a JSON or YAML document: objects matched by type, tenant and name.
    Import(ImportArgs),
    /// Read the audit trail: who changed what, when, and the previous values.
    Audit(AuditArgs),
    /// Show or switch the mode: normal, read_only, emergency (Super Administrators).
    Mode(ModeArgs),
    /// Role, mode, notification numbers and lease holder of each server.
    Status(StatusArgs),
}

/// How to reach and log in to the servers.
#[derive(Args, Clone)]
pub struct Conn {
    /// The servers to talk to, HOST:PORT, comma-separated: both masters of the pair, or a
    /// site's two proxies.
    #[arg(long, env = "TANDEM_CFG_SERVERS", value_delimiter = ',', required = true)]
    servers: Vec<String>,
    /// Log in as this user for this command (password from --password-file or
    /// TANDEM_CFG_PASSWORD).
    #[arg(long, env = "TANDEM_CFG_USER")]
    user: Option<String>,
    /// File holding the password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Tenant of the user (default: the environment).
    #[arg(long, default_value = "")]
    login_tenant: String,
    /// A session token from `tandem cfg login --print-token`.
    #[arg(long, env = "TANDEM_CFG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where `login` keeps the token and other commands find it (default:
    /// ~/.tandem/cfg-session).
    #[arg(long, env = "TANDEM_CFG_SESSION")]
    session_file: Option<PathBuf>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 15_000)]
    deadline_ms: u64,
    #[command(flatten)]
    tls: TlsFiles,
}

impl Conn {
    fn client(&self) -> anyhow::Result<ConfClient> {
        let config = ClientConfig {
            tls: self.tls.clone(),
            deadline: Duration::from_millis(self.deadline_ms),
            attempt_timeout: Duration::from_millis(self.deadline_ms.clamp(1000, 30_000)),
            // One command, one call at a time.
            connections: 1,
            ..ClientConfig::default()
        };
        ConfClient::new(self.servers.clone(), config).context("cannot set up the client")
    }

    fn session_file(&self) -> PathBuf {
        self.session_file.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".tandem").join("cfg-session")
        })
    }

    fn password(&self) -> anyhow::Result<String> {
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            return Ok(text.trim_end_matches(['\n', '\r']).to_owned());
        }
        std::env::var("TANDEM_CFG_PASSWORD")
            .map_err(|_| anyhow!("no password: give --password-file or set TANDEM_CFG_PASSWORD"))
    }

    /// A client with a session: a token given, a login, or the session file.
    async fn session(&self) -> anyhow::Result<ConfClient> {
        let client = self.client()?;
        if let Some(token) = &self.token {
            client.set_token(token);
        } else if let Some(user) = &self.user {
            client
                .login(user, &self.password()?, &self.login_tenant)
                .await
                .with_context(|| format!("cannot log in as {user}"))?;
        } else {
            client.set_token(&read_session(&self.session_file())?);
        }
        Ok(client)
    }
}

#[derive(Args)]
pub struct LoginArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print the token instead of saving it.
    #[arg(long)]
    print_token: bool,
    /// Print a JSON object: user, login_tenant, person, super_admin, expires_at_ms, the server
    /// that answered, and the session file (or, with --print-token, the token). Never the
    /// password.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GetArgs {
    /// Object type (tenant, folder, host, application, person, access_group, switch, dn, place,
    /// agent_group, skill, alarm_condition).
    object_type: ObjectType,
    /// DBID (or give --name).
    dbid: Option<u64>,
    /// The object's name (with --tenant).
    #[arg(long, conflicts_with = "dbid")]
    name: Option<String>,
    /// Tenant DBID for --name (default: the environment, 1).
    #[arg(long, default_value_t = 1)]
    tenant: u64,
    /// Print the object as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct QueryArgs {
    /// Object type (tenant, folder, host, application, person, access_group, switch, dn, place,
    /// agent_group, skill, alarm_condition).
    object_type: ObjectType,
    /// Exact name.
    #[arg(long)]
    name: Option<String>,
    /// Name prefix.
    #[arg(long, conflicts_with = "name")]
    prefix: Option<String>,
    /// Only this tenant's objects (DBID).
    #[arg(long)]
    tenant: Option<u64>,
    /// Direct contents of this folder (0 = a tenant's root).
    #[arg(long)]
    folder: Option<u64>,
    /// Field equality, NAME=VALUE (repeat); `switch=4` finds the DNs of switch 4.
    #[arg(long = "field", value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Only objects in this state: enabled or disabled.
    #[arg(long)]
    state: Option<String>,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Continue after this DBID.
    #[arg(long)]
    after: Option<u64>,
    /// Every page, not just the first.
    #[arg(long)]
    all: bool,
    /// DBID and name only.
    #[arg(long)]
    brief: bool,
    /// Print the objects as one JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// The parts of an object a create or update names.
#[derive(Args)]
pub struct ObjectParts {
    /// Field to set, NAME=VALUE, typed by the schema (repeat).
    #[arg(long = "field", value_name = "NAME=VALUE")]
    fields: Vec<String>,
    /// Option to set, SECTION/KEY=VALUE (repeat).
    #[arg(long = "option", value_name = "SECTION/KEY=VALUE")]
    options: Vec<String>,
    /// Annex entry to set, SECTION/KEY=VALUE (repeat).
    #[arg(long = "annex", value_name = "SECTION/KEY=VALUE")]
    annex: Vec<String>,
    /// For a person: file holding the new password (hashed by the server).
    #[arg(long = "new-password-file")]
    new_password_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Object type (tenant, folder, host, application, person, access_group, switch, dn, place,
    /// agent_group, skill, alarm_condition).
    object_type: ObjectType,
    /// The new object's name (unique per type within its tenant).
    #[arg(long)]
    name: String,
    /// Tenant DBID (default: the environment, 1; tenants themselves have none).
    #[arg(long)]
    tenant: Option<u64>,
    /// The folder to create it in (0 = the tenant's root).
    #[arg(long, default_value_t = 0)]
    folder: u64,
    /// enabled or disabled.
    #[arg(long)]
    state: Option<String>,
    #[command(flatten)]
    parts: ObjectParts,
    /// Print the result as one JSON object: first_seq, last_seq, object, created, changed,
    /// deleted.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Object type (tenant, folder, host, application, person, access_group, switch, dn, place,
    /// agent_group, skill, alarm_condition).
    object_type: ObjectType,
    /// The object's DBID.
    dbid: u64,
    /// Rename.
    #[arg(long)]
    name: Option<String>,
    /// enabled or disabled.
    #[arg(long)]
    state: Option<String>,
    /// Move to this folder (0 = root).
    #[arg(long)]
    folder: Option<u64>,
    #[command(flatten)]
    parts: ObjectParts,
    /// Field to unset (repeat).
    #[arg(long = "unset", value_name = "NAME")]
    unset: Vec<String>,
    /// Option key (SECTION/KEY) or section (SECTION) to delete (repeat).
    #[arg(long = "delete-option", value_name = "SECTION[/KEY]")]
    delete_options: Vec<String>,
    /// Annex key or section to delete (repeat).
    #[arg(long = "delete-annex", value_name = "SECTION[/KEY]")]
    delete_annex: Vec<String>,
    /// A whole delta as JSON (file, or - for stdin) instead of the flags.
    #[arg(long)]
    delta_json: Option<PathBuf>,
    /// Refuse unless the object is at this version.
    #[arg(long, default_value_t = 0)]
    expected_version: u64,
    /// Print the result as one JSON object: first_seq, last_seq, object, created, changed,
    /// deleted.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Object type (tenant, folder, host, application, person, access_group, switch, dn, place,
    /// agent_group, skill, alarm_condition).
    object_type: ObjectType,
    /// The object's DBID.
    dbid: u64,
    /// Also delete what cannot live without it, and clear optional references to it.
    #[arg(long)]
    cascade: bool,
    /// Print the result as one JSON object: first_seq, last_seq, object, created, changed,
    /// deleted.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct WatchArgs {
    /// Only these types (repeat).
    #[arg(long = "type")]
    types: Vec<ObjectType>,
    /// Only this tenant's objects (DBID).
    #[arg(long)]
    tenant: Option<u64>,
    /// Replay the history after this notification number first.
    #[arg(long)]
    after: Option<u64>,
    /// Stop after this many notifications.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Only this folder and what is under it.
    #[arg(long)]
    folder: Option<u64>,
    /// Write here instead of stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// json or yaml (default: from the --output extension, .yaml/.yml or .json; else json).
    #[arg(long)]
    format: Option<TextFormat>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The document (JSON or YAML), or - for stdin.
    file: PathBuf,
    /// json or yaml (default: from the file's extension, .yaml/.yml or .json; else json).
    #[arg(long)]
    format: Option<TextFormat>,
    /// Report only; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as one JSON object: dry_run, created, changed, skipped, first_seq,
    /// last_seq.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct AuditArgs {
    /// Records after this number.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many records.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Only changes to objects of this type.
    #[arg(long = "type")]
    object_type: Option<ObjectType>,
    /// Only changes to the object with this DBID.
    #[arg(long)]
    dbid: Option<u64>,
    /// Only changes by this person (DBID).
    #[arg(long)]
    person: Option<u64>,
    /// Every page.
    #[arg(long)]
    all: bool,
    /// One JSON record per line (with the previous values).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct ModeArgs {
    /// The new mode; none = show the current one.
    mode: Option<Mode>,
    /// Print JSON: the mode (or, when switching, the write's result).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print each server's status as a JSON array.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

pub async fn run(command: CfgCommand) -> anyhow::Result<()> {
    match command {
        CfgCommand::Login(args) => login(args).await,
        CfgCommand::Get(args) => get(args).await,
        CfgCommand::Query(args) => query(args).await,
        CfgCommand::Create(args) => create(args).await,
        CfgCommand::Update(args) => update(args).await,
        CfgCommand::Delete(args) => delete(args).await,
        CfgCommand::Watch(args) => watch(args).await,
        CfgCommand::Export(args) => export(args).await,
        CfgCommand::Import(args) => import(args).await,
        CfgCommand::Audit(args) => audit(args).await,
        CfgCommand::Mode(args) => mode(args).await,
        CfgCommand::Status(args) => status(args).await,
    }
}

// ----- value parsing -----

fn parse_field(object_type: ObjectType, spec: &str) -> anyhow::Result<(String, Value)> {
    let (name, raw) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("field {spec:?}: expected NAME=VALUE"))?;
    let field = schema::spec(object_type).field(name).ok_or_else(|| {
        let known: Vec<&str> = schema::spec(object_type).fields.iter().map(|f| f.name).collect();
        if known.is_empty() {
            anyhow!("a {object_type} has no fields (its settings are options: --option SECTION/KEY=VALUE)")
        } else {
            anyhow!("a {object_type} has no field `{name}` (fields: {})", known.join(", "))
        }
    })?;
    let invalid = |what: &str| anyhow!("field `{name}` of a {object_type} must be {what}, not {raw:?}");
    let value = match field.kind {
        schema::FieldKind::Str => Value::Str(raw.to_owned()),
        schema::FieldKind::Int => Value::Int(raw.parse().map_err(|_| invalid("an integer"))?),
        schema::FieldKind::Bool => Value::Bool(raw.parse().map_err(|_| invalid("true or false"))?),
        schema::FieldKind::Ref(_) => Value::Ref(raw.parse().map_err(|_| invalid("a DBID"))?),
        schema::FieldKind::RefList(_) => Value::RefList(
            raw.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().map_err(|_| invalid("comma-separated DBIDs")))
                .collect::<Result<_, _>>()?,
        ),
        schema::FieldKind::Grants => Value::Grants(
            serde_json::from_str::<Vec<Grant>>(raw)
                .map_err(|_| invalid("a JSON list of grants, e.g. [{\"object_type\":\"dn\",\"rights\":[\"read\"]}]"))?,
        ),
    };
    Ok((name.to_owned(), value))
}

fn parse_section_key(spec: &str) -> anyhow::Result<(String, String, String)> {
    let (path, value) = spec
        .split_once('=')
        .ok_or_else(|| anyhow!("{spec:?}: expected SECTION/KEY=VALUE"))?;
    let (section, key) = path
        .split_once('/')
        .ok_or_else(|| anyhow!("{spec:?}: expected SECTION/KEY=VALUE"))?;
    Ok((section.to_owned(), key.to_owned(), value.to_owned()))
}

fn parse_state(state: &str) -> anyhow::Result<State> {
    match state {
        "enabled" => Ok(State::Enabled),
        "disabled" => Ok(State::Disabled),
        other => bail!("state {other:?}: expected enabled or disabled"),
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        Ok(text)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

fn read_secret(path: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match path {
        None => Ok(None),
        Some(path) => Ok(Some(read_input(path)?.trim_end_matches(['\n', '\r']).to_owned())),
    }
}

// ----- printing -----

fn value_text(value: &Value) -> String {
    match value {
        Value::Str(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Ref(d) => format!("#{d}"),
        Value::RefList(l) => l.iter().map(|d| format!("#{d}")).collect::<Vec<_>>().join(","),
        Value::Grants(g) => serde_json::to_string(g).unwrap_or_default(),
    }
}

fn fields_text(obj: &ConfigObject) -> String {
    obj.fields
        .iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints rows as a table with a header, columns padded to their widest cell.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn print_object(obj: &ConfigObject) {
    println!(
        "{} {:?} (dbid {}, version {})",
        obj.object_type, obj.name, obj.dbid, obj.version
    );
    println!("  tenant   {}", obj.tenant);
    println!("  folder   {}", obj.folder);
    println!("  state    {}", obj.state);
    for (k, v) in &obj.fields {
        println!("  {k:<8} {}", value_text(v));
    }
    for (label, sections) in [("option", &obj.options), ("annex", &obj.annex)] {
        for (section, keys) in sections {
            for (key, value) in keys {
                println!("  {label} {section}/{key} = {value}");
            }
        }
    }
}

fn keys_json(keys: &[pb::ObjectKey]) -> serde_json::Value {
    serde_json::to_value(keys).unwrap_or_default()
}

fn write_json(result: &WriteResult) -> serde_json::Value {
    json!({
        "first_seq": result.first_seq,
        "last_seq": result.last_seq,
        "object": result.object,
        "created": keys_json(&result.created),
        "changed": keys_json(&result.changed),
        "deleted": keys_json(&result.deleted),
    })
}

fn describe_keys(verb: &str, keys: &[pb::ObjectKey]) {
    for k in keys {
        println!("{verb} {} {:?} (dbid {})", k.object_type, k.name, k.dbid);
    }
}

fn print_write(result: &WriteResult, json: bool) {
    if json {
        println!("{}", write_json(result));
        return;
    }
    if result.first_seq == 0 {
        println!("nothing changed");
        return;
    }
    describe_keys("created", &result.created);
    describe_keys("changed", &result.changed);
    describe_keys("deleted", &result.deleted);
    if result.first_seq == result.last_seq {
        println!("notification {}", result.first_seq);
    } else {
        println!("notifications {}..={}", result.first_seq, result.last_seq);
    }
}

fn when_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), UTC.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

// ----- commands -----

async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let user = args
        .conn
        .user
        .clone()
        .ok_or_else(|| anyhow!("give --user (or TANDEM_CFG_USER)"))?;
    let client = args.conn.client()?;
    let response = client
        .login(&user, &args.conn.password()?, &args.conn.login_tenant)
        .await
        .with_context(|| format!("cannot log in as {user}"))?;
    let saved_in = if args.print_token {
        None
    } else {
        let path = args.conn.session_file();
        save_session(&path, &response.token)?;
        Some(path)
    };
    if args.json {
        let mut answer = json!({
            "user": user,
            "login_tenant": args.conn.login_tenant,
            "person": response.person,
            "super_admin": response.super_admin,
            "expires_at_ms": response.expires_at_ms,
            "server": client.last_answered(),
            "session_file": saved_in.as_ref().map(|p| p.display().to_string()),
        });
        if args.print_token {
            answer["token"] = json!(response.token);
        }
        println!("{answer}");
        return Ok(());
    }
    let Some(path) = saved_in else {
        println!("{}", response.token);
        return Ok(());
    };
    println!(
        "logged in as {user} (person {}{}); session kept in {} until {}",
        response.person,
        if response.super_admin {
            ", Super Administrator"
        } else {
            ""
        },
        path.display(),
        when_text(response.expires_at_ms)
    );
    Ok(())
}

/// Keeps a session token in `path`, readable by its owner only from the start (a directory
/// made for it gets mode 0700): the token is
/// written to a new file of the same directory, created with mode 0600, which then replaces
/// `path`. No other user can read the token even for a moment, whatever `path` was before, and
/// a crash leaves either the old session or the new one, never half of one.
fn save_session(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Directories made here (e.g. `~/.tandem`) are their owner's alone too; existing ones are
    // left as they are.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mut file = tempfile::Builder::new()
        .prefix(".cfg-session.")
        .make_in(dir, |name| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(name)
        })
        .with_context(|| format!("cannot create a new session file in {}", dir.display()))?;
    // The new file is removed if anything below fails, and `path` is left as it was.
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", file.path().display()))?;
    file.persist(path)
        .with_context(|| format!("cannot replace {}", path.display()))?;
    remove_stray_sessions(dir, STRAY_SESSION_AGE);
    Ok(())
}

/// Age past which a new session file that was never renamed into place is a crash's leftover
/// (a login in progress renames its file within a moment).
const STRAY_SESSION_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the new session files in `dir` that a crashed login left behind (each holds a
/// token), if older than `age`. Best effort: a file that cannot be removed stays.
fn remove_stray_sessions(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let stray = entry.file_name().to_string_lossy().starts_with(".cfg-session.")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|elapsed| elapsed > age));
        if stray {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::debug!(file = %entry.path().display(), error = %e, "cannot remove a stray session file");
            }
        }
    }
}

/// The session token kept in `path` by [`save_session`].
fn read_session(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "not logged in: run `tandem cfg login --user USER`, or give --user or --token ({} not readable)",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    let obj = match (args.dbid, &args.name) {
        (Some(dbid), _) => client.get(args.object_type, dbid).await?,
        (None, Some(name)) => client.get_by_name(args.object_type, args.tenant, name).await?,
        (None, None) => bail!("give a DBID or --name"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        print_object(&obj);
    }
    Ok(())
}

async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    let mut query = Query::new(args.object_type).limit(args.limit);
    query.name = match (&args.name, &args.prefix) {
        (Some(n), _) => Some(tandem_config::NameMatch::Exact(n.clone())),
        (None, Some(p)) => Some(tandem_config::NameMatch::Prefix(p.clone())),
        _ => None,
    };
    query.tenant = args.tenant;
    query.folder = args.folder;
    query.state = args.state.as_deref().map(parse_state).transpose()?;
    query.after_dbid = args.after;
    query.brief = args.brief;
    for f in &args.fields {
        let (name, value) = parse_field(args.object_type, f)?;
        query.fields.push((name, value));
    }
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    loop {
        let page = client.query(&query).await?;
        match &page.items {
            PageItems::Full(list) => {
                for o in list {
                    rows.push(vec![
                        o.dbid.to_string(),
                        o.name.clone(),
                        o.tenant.to_string(),
                        o.folder.to_string(),
                        o.state.to_string(),
                        o.version.to_string(),
                        fields_text(o),
                    ]);
                    objects.push(serde_json::to_value(o)?);
                }
            }
            PageItems::Brief(list) => {
                for o in list {
                    rows.push(vec![o.dbid.to_string(), o.name.clone()]);
                    objects.push(json!({"dbid": o.dbid, "name": o.name}));
                }
            }
        }
        match page.next_after_dbid {
            Some(next) if args.all => query.after_dbid = Some(next),
            Some(next) => {
                if !args.json {
                    eprintln!("(more: continue with --after {next}, or give --all)");
                }
                break;
            }
            None => break,
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(objects));
    } else if args.brief {
        print_table(&["DBID", "NAME"], &rows);
    } else {
        print_table(
            &["DBID", "NAME", "TENANT", "FOLDER", "STATE", "VERSION", "FIELDS"],
            &rows,
        );
    }
    Ok(())
}

async fn create(args: CreateArgs) -> anyhow::Result<()> {
    let tenant = match (args.tenant, args.object_type) {
        (Some(t), _) => t,
        (None, ObjectType::Tenant) => 0,
        (None, _) => tandem_config::ENVIRONMENT_TENANT,
    };
    let mut obj = ConfigObject::new(args.object_type, 0, &args.name, tenant).in_folder(args.folder);
    if let Some(state) = &args.state {
        obj.state = parse_state(state)?;
    }
    for f in &args.parts.fields {
        let (name, value) = parse_field(args.object_type, f)?;
        obj.fields.insert(name, value);
    }
    for o in &args.parts.options {
        let (s, k, v) = parse_section_key(o)?;
        obj = obj.with_option(&s, &k, &v);
    }
    for a in &args.parts.annex {
        let (s, k, v) = parse_section_key(a)?;
        obj = obj.with_annex(&s, &k, &v);
    }
    let password = read_secret(&args.parts.new_password_file)?;
    let client = args.conn.session().await?;
    let result = client.create(&obj, password.as_deref()).await?;
    print_write(&result, args.json);
    Ok(())
}

async fn update(args: UpdateArgs) -> anyhow::Result<()> {
    let mut delta = match &args.delta_json {
        Some(path) => serde_json::from_str::<Delta>(&read_input(path)?).context("not a delta")?,
        None => Delta::new(),
    };
    delta.name = args.name.clone().or(delta.name);
    if let Some(state) = &args.state {
        delta.state = Some(parse_state(state)?);
    }
    delta.folder = args.folder.or(delta.folder);
    for f in &args.parts.fields {
        let (name, value) = parse_field(args.object_type, f)?;
        delta.set_fields.insert(name, value);
    }
    delta.unset_fields.extend(args.unset.iter().cloned());
    for o in &args.parts.options {
        let (s, k, v) = parse_section_key(o)?;
        delta = delta.set_option(&s, &k, &v);
    }
    for a in &args.parts.annex {
        let (s, k, v) = parse_section_key(a)?;
        delta = delta.set_annex(&s, &k, &v);
    }
    for d in &args.delete_options {
        delta = match d.split_once('/') {
            Some((s, k)) => delta.delete_option(s, k),
            None => delta.delete_option_section(d),
        };
    }
    for d in &args.delete_annex {
        delta = match d.split_once('/') {
            Some((s, k)) => delta.delete_annex(s, k),
            None => delta.delete_annex_section(d),
        };
    }
    let password = read_secret(&args.parts.new_password_file)?;
    let client = args.conn.session().await?;
    let result = client
        .update(
            args.object_type,
            args.dbid,
            &delta,
            password.as_deref(),
            args.expected_version,
        )
        .await?;
    print_write(&result, args.json);
    Ok(())
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    let result = client.delete(args.object_type, args.dbid, args.cascade).await?;
    print_write(&result, args.json);
    Ok(())
}

fn notification_line(n: &pb::Notification) -> String {
    match n.kind.as_str() {
        "live" => format!("-- live after notification {} (mode {})", n.seq, n.mode),
        "mode" => format!("#{} mode {} by {} at {}", n.seq, n.mode, n.user, when_text(n.when_ms)),
        kind => {
            let mut line = format!(
                "#{} {kind} {} {:?} (dbid {}) by {} at {}",
                n.seq,
                n.object_type,
                n.name,
                n.dbid,
                n.user,
                when_text(n.when_ms)
            );
            if !n.delta_json.is_empty() {
                line.push_str(&format!(" {}", n.delta_json));
            }
            line
        }
    }
}

async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    let filter = SubscribeFilter {
        object_types: args.types.clone(),
        tenant: args.tenant,
        dbid: None,
    };
    let mut subscription = client.subscribe(filter, args.after);
    let mut seen = 0u64;
    loop {
        if args.count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let n = subscription.next().await.context("subscription ended")?;
        if args.json {
            println!("{}", serde_json::to_string(&n)?);
        } else {
            println!("{}", notification_line(&n));
        }
        if n.kind != "live" {
            seen += 1;
        }
    }
}

/// The document format: the one asked for, else the one the file's extension names, else JSON.
fn document_format(asked: Option<TextFormat>, file: Option<&std::path::Path>) -> TextFormat {
    asked
        .or_else(|| file.and_then(|f| TextFormat::from_file_name(&f.to_string_lossy())))
        .unwrap_or(TextFormat::Json)
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let format = document_format(args.format, args.output.as_deref());
    let client = args.conn.session().await?;
    let doc = client.export(args.folder).await?;
    let text = doc.to_text(format);
    let text = text.trim_end_matches('\n');
    match &args.output {
        Some(path) => {
            std::fs::write(path, format!("{text}\n")).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "exported {} objects to {} ({format})",
                doc.objects.len(),
                path.display()
            );
        }
        None => println!("{text}"),
    }
    Ok(())
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let text = read_input(&args.file)?;
    // The server takes JSON: a YAML document is read (and its syntax checked) here.
    let text = match document_format(args.format, Some(args.file.as_path())) {
        TextFormat::Json => text,
        TextFormat::Yaml => match Document::from_yaml(&text) {
            Ok(doc) => doc.to_json(),
            Err(ConfigError::InvalidDocument { reason, .. }) => bail!("{}: {reason}", args.file.display()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", args.file.display())),
        },
    };
    let client = args.conn.session().await?;
    let report = client.import(&text, args.dry_run).await?;
    if args.json {
        println!(
            "{}",
            json!({
                "dry_run": args.dry_run,
                "created": keys_json(&report.created),
                "changed": keys_json(&report.changed),
                "skipped": keys_json(&report.skipped),
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
            })
        );
        return Ok(());
    }
    let verb = |v: &str| {
        if args.dry_run {
            format!("would {v}")
        } else {
            format!("{v}d")
        }
    };
    describe_keys(&verb("create"), &report.created);
    describe_keys(&verb("change"), &report.changed);
    println!(
        "{}: {} created, {} changed, {} skipped (already as the document says)",
        if args.dry_run { "dry run" } else { "imported" },
        report.created.len(),
        report.changed.len(),
        report.skipped.len()
    );
    Ok(())
}

fn audit_row(r: &LogRecord) -> Vec<String> {
    let object = match (&r.what, r.object()) {
        (What::Mode { mode, previous }, _) => format!("mode {previous} → {mode}"),
        (_, Some(o)) => format!("{} {:?} (dbid {})", o.object_type, o.name, o.dbid),
        _ => String::new(),
    };
    vec![
        r.seq.to_string(),
        when_text(r.when_ms),
        format!("{} ({})", r.who.user, r.who.person),
        r.kind().to_owned(),
        object,
        r.op.clone(),
    ]
}

async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    let mut request = pb::AuditRequest {
        after_seq: args.after,
        limit: args.limit,
        object_type: args.object_type.map(|t| t.name().to_owned()).unwrap_or_default(),
        dbid: args.dbid.unwrap_or(0),
        person: args.person.unwrap_or(0),
    };
    let mut rows = Vec::new();
    loop {
        let (records, next) = client.audit(request.clone()).await?;
        for r in &records {
            if args.json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                rows.push(audit_row(r));
            }
        }
        if next == 0 || !(args.all || records.is_empty() && rows.is_empty()) {
            if next != 0 && !args.all && !args.json {
                eprintln!("(more: continue with --after {next}, or give --all)");
            }
            break;
        }
        request.after_seq = next;
    }
    if !args.json {
        print_table(&["SEQ", "WHEN", "WHO", "KIND", "OBJECT", "REQUEST"], &rows);
    }
    Ok(())
}

async fn mode(args: ModeArgs) -> anyhow::Result<()> {
    let client = args.conn.session().await?;
    if let Some(mode) = args.mode {
        let result = client.set_mode(mode).await?;
        if args.json {
            println!("{}", write_json(&result));
        } else if result.first_seq == 0 {
            println!("mode already {mode}");
        } else {
            println!("mode switched to {mode} (notification {})", result.first_seq);
        }
        return Ok(());
    }
    let answers = client.status_all().await;
    let (_, status) = answers
        .iter()
        .find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "primary"))
        .or_else(|| answers.iter().find(|(_, s)| s.is_ok()))
        .ok_or_else(|| anyhow!("no server answered"))?;
    let status = status.as_ref().map_err(|e| anyhow!("{e}"))?;
    if args.json {
        println!("{}", json!({ "mode": status.mode }));
    } else {
        println!("{}", status.mode);
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let answers = client.status_all().await;
    if args.json {
        let list: Vec<serde_json::Value> = answers
            .iter()
            .map(|(addr, a)| match a {
                Ok(s) => serde_json::to_value(s).unwrap_or_default(),
                Err(e) => json!({ "addr": addr, "error": e.to_string() }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = answers
        .iter()
        .map(|(addr, a)| match a {
            Ok(s) => vec![
                addr.clone(),
                s.name.clone(),
                s.role.clone(),
                s.mode.clone(),
                s.proxy_mode.clone(),
                s.last_seq.to_string(),
                s.history_oldest_seq.to_string(),
                s.objects.to_string(),
                // A proxy names the master it is attached to.
                if s.role == "proxy" {
                    s.master.clone()
                } else {
                    s.lease_holder.clone()
                },
                if s.role == "proxy" {
                    s.proxy_mode_reason.clone()
                } else {
                    s.last_step_down.clone()
                },
            ],
            Err(e) => vec![addr.clone(), "-".into(), format!("unreachable: {e}")],
        })
        .collect();
    print_table(
        &[
            "SERVER",
            "NAME",
            "ROLE",
            "MODE",
            "PROXY MODE",
            "LAST SEQ",
            "RESUMABLE AFTER",
            "OBJECTS",
            "LEASE HOLDER / MASTER",
            "LAST STEP-DOWN / PROXY REASON",
        ],
        &rows,
    );
    let proxies = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .filter(|s| s.role == "proxy");
    if proxies.clone().count() > 0 {
        if !proxies.clone().any(|s| s.proxy_mode == "normal") {
            bail!("no proxy is in normal mode: writes are refused (limited mode)");
        }
        return Ok(());
    }
    if !answers
        .iter()
        .any(|(_, a)| a.as_ref().is_ok_and(|s| s.role == "primary"))
    {
        bail!("no server is primary: writes are refused");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::{read_session, save_session};

    /// The permission bits of `path`, in octal.
    fn mode(path: &Path) -> String {
        format!(
            "{:o}",
            std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
        )
    }

    /// The names in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_session_file_is_its_owners_alone_and_gives_back_the_token() {
        let root = tempfile::tempdir().expect("dir");
        let dir = root.path().join("home").join(".tandem");
        let path = dir.join("cfg-session");

        // A new file, in a directory not there yet.
        save_session(&path, "first.token").expect("save");
        assert_eq!(mode(&path), "600", "readable by its owner only");
        assert_eq!(mode(&dir), "700", "the directory made for it is its owner's alone");
        assert_eq!(read_session(&path).expect("read"), "first.token");
        assert_eq!(names(&dir), vec!["cfg-session"], "nothing left beside it");

        // An existing file others could read is replaced, not rewritten in place.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let before = std::fs::metadata(&path).expect("metadata").ino();
        save_session(&path, "second.token").expect("save again");
        assert_eq!(mode(&path), "600", "an existing file ends up its owner's alone too");
        assert_ne!(
            std::fs::metadata(&path).expect("metadata").ino(),
            before,
            "written aside and renamed: the old file, readable by others, never holds the new token"
        );
        assert_eq!(read_session(&path).expect("read"), "second.token");
        assert_eq!(names(&dir), vec!["cfg-session"], "nothing left beside it");
    }

    #[test]
    fn a_login_removes_the_session_files_a_crashed_login_left_but_not_one_in_progress() {
        let root = tempfile::tempdir().expect("dir");
        let path = root.path().join("cfg-session");
        let old = root.path().join(".cfg-session.crashed");
        let fresh = root.path().join(".cfg-session.running");
        std::fs::write(&old, "old.token\n").expect("write");
        std::fs::write(&fresh, "fresh.token\n").expect("write");
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(an_hour_ago))
            .expect("age the crashed login's file");
        save_session(&path, "new.token").expect("save");
        assert_eq!(
            names(root.path()),
            vec![".cfg-session.running", "cfg-session"],
            "the crashed login's file is removed, the one just written is kept"
        );
        assert_eq!(read_session(&path).expect("read"), "new.token");
    }

    #[test]
    fn a_session_that_cannot_be_written_leaves_the_old_one_and_no_stray_file() {
        let root = tempfile::tempdir().expect("dir");
        let path = root.path().join("cfg-session");
        save_session(&path, "kept.token").expect("save");
        // A directory where the file should be: the rename fails after the token is written.
        let blocked = root.path().join("blocked");
        std::fs::create_dir(&blocked).expect("mkdir");
        assert!(save_session(&blocked, "lost.token").is_err());
        assert_eq!(read_session(&path).expect("read"), "kept.token");
        assert_eq!(
            names(root.path()),
            vec!["blocked", "cfg-session"],
            "the new file is removed"
        );
    }
}
