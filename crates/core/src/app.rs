//! The application state every listener, the queue and the CLI share, and
//! the login procedure that ties the directory, the throttle and the store
//! together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postoffice_common::content::{Budget, SpoolWriter};
use postoffice_config::Config;
use postoffice_directory::throttle::{LoginThrottle, ThrottleConfig, Verdict};
use postoffice_directory::{
    AdminAuthOutcome, AuthOutcome, Directory, DirectoryData, ExpireSummary, LoginDelaySummary,
    PolicyDefaults, normalize_address,
};
use postoffice_store::{MailStore, Maildir, Maildrop, StoreError};
use tracing::{info, warn};

use crate::outbound::Outbound;

/// Why a login was refused. Only the caller's logs see the detail behind
/// `Credentials`; the client gets one `[AUTH]` answer for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong user or password, a disabled user, or a throttled client.
    Credentials,
    /// Another session holds the maildrop.
    InUse,
    /// The user logged in less than LOGIN-DELAY seconds ago.
    LoginDelay,
    /// A temporary local problem (storage, overload).
    Temp,
    /// A permanent local problem.
    Perm,
}

/// A successful login: the locked maildrop and the user's policy.
pub struct LoginOk {
    /// The canonical address.
    pub address: String,
    /// The locked snapshot; dropping it unlocks.
    pub maildrop: Arc<dyn Maildrop>,
    /// Days mail is kept (`None`: forever), for EXPIRE.
    pub retention_days: Option<u32>,
    /// Seconds between logins, for LOGIN-DELAY.
    pub login_delay_secs: u32,
}

/// Why the application could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The directory of users could not be opened.
    #[error(transparent)]
    Directory(#[from] postoffice_directory::Error),
    /// The verification pipeline's configuration is wrong.
    #[error(transparent)]
    Filter(#[from] postoffice_filter::FilterError),
    /// The spool directory could not be created.
    #[error("cannot create the spool directory {path}: {source}")]
    Spool {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The storage backend (`[storage]`) could not be opened.
    #[error("storage: {0}")]
    Storage(String),
}

/// The application state shared by every connection, the queue and the
/// CLI commands that act like the server (`deliver`, `sendmail`).
pub struct App {
    /// The configuration.
    pub config: Config,
    /// The maildrops (the Maildir backend today; any [`MailStore`]).
    pub store: Arc<dyn MailStore>,
    /// Domains and users.
    pub directory: Directory,
    /// Brute-force protection of logins.
    pub throttle: LoginThrottle,
    /// Recently verified credentials (see [`crate::auth_cache`]).
    pub auth_cache: crate::auth_cache::AuthCache,
    /// The inbound verification pipeline (SMTP).
    pub filters: postoffice_filter::Filters,
    /// The outbound queue (submission of mail for other domains); `None`
    /// refuses remote recipients.
    outbound: std::sync::RwLock<Option<Arc<dyn Outbound>>>,
    /// DKIM signing of submitted mail.
    pub dkim: crate::dkim::Signer,
    /// Where the SRS secret and the DKIM keys are (see [`crate::keys`]).
    pub keys: crate::keys::KeyStore,
    /// The metrics `/metrics` shows (and the shutdown log line sums up).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The live sessions.
    pub sessions: Arc<crate::sessions::Sessions>,
    /// Greylisting of the MX port; `None` when off.
    pub greylist: Option<crate::greylist::Greylist>,
    /// Messages and recipients each user submitted recently.
    pub send_limits: crate::send_limits::SendLimits,
    /// Connection and message rates per client on the MX port.
    pub rate_limits: crate::rate_limit::RateLimits,
    /// Where large messages are spooled while they are received.
    spool_dir: std::path::PathBuf,
    /// Message octets held in memory by all transactions.
    budget: Arc<Budget>,
    /// Password verifications running at once. An argon2id check needs
    /// 19 MiB and a core; more at once than there are cores only adds
    /// memory (30 parallel failed logins peaked at 390 MB before this).
    hash_permits: tokio::sync::Semaphore,
    /// Last successful login per user, for LOGIN-DELAY. In memory: a
    /// restart forgets it, which errs on the side of letting users in.
    last_login: Mutex<HashMap<String, Instant>>,
    /// The pre-login EXPIRE/LOGIN-DELAY summary of the current directory
    /// snapshot. Computing it walks every user, so it is done once per
    /// directory change, not once per connection.
    capa_cache: Mutex<Option<CapaCache>>,
    /// The SRS secret, loaded (or generated) on first use.
    srs: Mutex<Option<crate::srs::Srs>>,
    /// Serialises updates of the vacation state file.
    pub(crate) vacation_state: Mutex<()>,
    /// The marks every node shares (PostgreSQL backend): vacation replies
    /// sent (and greylisting's, through [`App::greylist`]).
    pub(crate) marks: Option<Arc<postoffice_pg::PgMarks>>,
}

type CapaCache = (Arc<DirectoryData>, ExpireSummary, LoginDelaySummary);

impl App {
    /// Open the directory and the store of `config.data_dir` and build the
    /// verification pipeline. No outbound queue is attached yet
    /// ([`App::set_outbound`]).
    pub fn new(config: Config) -> Result<Self, AppError> {
        let filters = postoffice_filter::Filters::new(&config.filter, &config.dns)?;
        Self::with_filters(config, filters)
    }

    /// Like [`App::new`], for commands that never receive mail from outside
    /// (`sendmail`, `deliver`): every verification stage is off, so nothing
    /// needs DNS or clamd.
    pub fn without_filters(config: Config) -> Result<Self, AppError> {
        let off = postoffice_config::Filter {
            dnsbl: postoffice_config::StageMode::Off,
            spf: postoffice_config::StageMode::Off,
            dkim: postoffice_config::StageMode::Off,
            dmarc: postoffice_config::StageMode::Off,
            virus: postoffice_config::StageMode::Off,
            ..postoffice_config::Filter::default()
        };
        let filters = postoffice_filter::Filters::new(&off, &config.dns)?;
        Self::with_filters(config, filters)
    }

    fn with_filters(config: Config, filters: postoffice_filter::Filters) -> Result<Self, AppError> {
        let directory = crate::inbound::blocking(|| directory(&config))?;
        let spool_dir = config.data_dir.join("spool");
        // Greylisting and vacation replies sent, shared by every node on
        // PostgreSQL (files in data_dir otherwise).
        let marks = match config.storage.backend {
            postoffice_config::Backend::Maildir => None,
            postoffice_config::Backend::Postgres => {
                Some(Arc::new(postoffice_pg::PgMarks::new(&pg_options(&config)?)))
            }
        };
        let greylist =
            crate::greylist::Greylist::open(&config.filter, &config.data_dir, marks.clone())
                .map_err(|e| AppError::Filter(postoffice_filter::FilterError::Config(e)))?;
        postoffice_common::durable::create_dir_all(&spool_dir).map_err(|source| {
            AppError::Spool {
                path: spool_dir.clone(),
                source,
            }
        })?;
        if let Ok(n) = postoffice_common::content::clean_spool(&spool_dir)
            && n > 0
        {
            info!(removed = n, "removed spool files left by a crash");
        }
        let budget = Budget::new(config.limits.max_inflight_message_bytes);
        let auth_cache = crate::auth_cache::AuthCache::new(
            Duration::from_secs(config.auth.cache_ttl_secs),
            config.auth.cache_entries,
        );
        let store = crate::inbound::blocking(|| store(&config))?;
        let a = &config.auth;
        let throttle = LoginThrottle::new(ThrottleConfig {
            free_failures: a.free_failures,
            base_delay: Duration::from_millis(a.base_delay_ms),
            max_delay: Duration::from_millis(a.max_delay_ms),
            lockout_after: a.lockout_after,
            lockout: Duration::from_secs(a.lockout_secs),
            forget_after: Duration::from_secs(a.forget_after_secs),
            ..ThrottleConfig::default()
        });
        let keys = keys(&config)?;
        let dkim = crate::dkim::Signer::with_keys(keys.clone(), &config.dkim.selector);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let sessions = crate::sessions::Sessions::new(Arc::clone(&metrics));
        let rate_limits = crate::rate_limit::RateLimits::new(&config);
        let send_limits = match config.storage.backend {
            postoffice_config::Backend::Maildir => {
                crate::send_limits::SendLimits::open(&config.data_dir)
            }
            postoffice_config::Backend::Postgres => crate::send_limits::SendLimits::shared(
                postoffice_pg::PgSendLog::new(&pg_options(&config)?),
            ),
        };
        Ok(App {
            config,
            store,
            directory,
            throttle,
            auth_cache,
            filters,
            outbound: std::sync::RwLock::new(None),
            dkim,
            keys,
            metrics,
            sessions,
            greylist,
            send_limits,
            rate_limits,
            hash_permits: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            last_login: Mutex::new(HashMap::new()),
            capa_cache: Mutex::new(None),
            srs: Mutex::new(None),
            vacation_state: Mutex::new(()),
            marks,
            spool_dir,
            budget,
        })
    }

    /// The server-wide policy defaults of the configuration.
    pub fn policy_defaults(&self) -> PolicyDefaults {
        policy_defaults(&self.config)
    }

    /// Attach the outbound queue: submitted mail for other domains goes
    /// there from now on.
    pub fn set_outbound(&self, outbound: Arc<dyn Outbound>) {
        *self.outbound.write().unwrap_or_else(|p| p.into_inner()) = Some(outbound);
    }

    /// The SRS keys (see [`crate::srs`]): read from the data directory (or
    /// the database), or generated there on first use. `None` (logged) when
    /// the key cannot be read or written.
    pub fn srs(&self) -> Option<crate::srs::Srs> {
        let mut slot = self.srs.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match crate::srs::Srs::load_or_create_in(
                &self.keys,
                self.config.addresses.srs_max_age_days,
            ) {
                Ok(s) => *slot = Some(s),
                Err(e) => warn!(error = %e, "cannot load the SRS key"),
            }
        }
        slot.clone()
    }

    /// The outbound queue, if one is attached.
    pub fn outbound(&self) -> Option<Arc<dyn Outbound>> {
        self.outbound
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A writer for a message being received: in memory up to
    /// `[limits] message_spill_bytes` (and within the in-memory budget),
    /// then an anonymous file in `data_dir/spool`.
    pub fn spool_writer(&self) -> std::io::Result<SpoolWriter> {
        Ok(SpoolWriter::new(
            &self.spool_dir,
            self.config.limits.message_spill_bytes,
            Some(Arc::clone(&self.budget)),
        ))
    }

    /// Message octets held in memory right now, by all transactions.
    pub fn inflight_message_bytes(&self) -> u64 {
        self.budget.used()
    }

    /// Local delivery with this application's configuration, directory
    /// and store.
    pub fn local(&self) -> crate::delivery::Local<'_> {
        crate::delivery::Local {
            config: &self.config,
            directory: &self.directory,
            store: &*self.store,
        }
    }

    /// What CAPA advertises for EXPIRE and LOGIN-DELAY before login.
    pub fn capa_summary(&self) -> (ExpireSummary, LoginDelaySummary) {
        let snap = self.directory.snapshot();
        let mut cache = self.capa_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached, e, d)) = cache.as_ref()
            && Arc::ptr_eq(cached, &snap)
        {
            return (*e, *d);
        }
        let defaults = self.policy_defaults();
        let e = snap.expire_summary(&defaults);
        let d = snap.login_delay_summary(&defaults);
        *cache = Some((snap, e, d));
        (e, d)
    }

    /// Verify a user's password with brute-force throttling: the throttle
    /// is consulted before any password work (a locked-out client costs us
    /// nothing), and a failure always costs one hash verification (unknown
    /// users included, so timing reveals nothing). Returns the canonical
    /// address. Shared by POP3, SMTP submission and the web sign-in.
    pub async fn authenticate(
        &self,
        user: &str,
        password: Vec<u8>,
        ip: IpAddr,
    ) -> Result<String, LoginError> {
        let address = normalize_address(user).unwrap_or_else(|_| String::new());
        self.throttle_wait(user, &address, ip).await?;
        let dir = self.directory.snapshot();
        // A password verified recently against the stored hash the user
        // still has: no slow hash (see crate::auth_cache). Only ever a
        // success; anything else takes the full path below.
        if !address.is_empty() && self.auth_cache.check(&dir, &address, &password) {
            self.throttle.record_success(ip, &address, Instant::now());
            self.metrics.auth_cache_hits.inc([]);
            return Ok(address);
        }
        let addr = address.clone();
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| LoginError::Temp)?;
        let (outcome, password, dir) = tokio::task::spawn_blocking(move || {
            let outcome = if addr.is_empty() {
                postoffice_directory::dummy_verify(&password);
                AuthOutcome::Failed
            } else {
                dir.authenticate(&addr, &password)
            };
            (outcome, password, dir)
        })
        .await
        .map_err(|_| LoginError::Temp)?;
        match outcome {
            AuthOutcome::Ok(u) => {
                self.throttle.record_success(ip, &u.address, Instant::now());
                if let Some(stored) = dir.user(&u.address) {
                    self.auth_cache
                        .remember(&u.address, &password, &stored.password_hash);
                }
                Ok(u.address)
            }
            AuthOutcome::Failed => Err(self.throttle_failed(user, &address, ip)),
        }
    }

    /// Verify an administrator's password for the web interface, through
    /// the same throttle as user logins (administrator names have no `@`,
    /// so they never share a throttle entry with a user), with one hash
    /// verification per attempt whatever the name. Returns the canonical
    /// name.
    pub async fn authenticate_admin(
        &self,
        name: &str,
        password: Vec<u8>,
        ip: IpAddr,
    ) -> Result<String, LoginError> {
        let canonical = postoffice_directory::normalize_admin_name(name).unwrap_or_default();
        self.throttle_wait(name, &canonical, ip).await?;
        let dir = self.directory.snapshot();
        let _permit = self
            .hash_permits
            .acquire()
            .await
            .map_err(|_| LoginError::Temp)?;
        let n = canonical.clone();
        let outcome = tokio::task::spawn_blocking(move || dir.authenticate_admin(&n, &password))
            .await
            .map_err(|_| LoginError::Temp)?;
        match outcome {
            AdminAuthOutcome::Ok(found) => {
                self.throttle.record_success(ip, &found, Instant::now());
                Ok(found)
            }
            AdminAuthOutcome::Failed => Err(self.throttle_failed(name, &canonical, ip)),
        }
    }

    /// The throttle before a password verification: wait the delay it
    /// asks for, or refuse while `key` (the canonical name, "" when
    /// malformed) or the client's network is locked out. `typed` is what
    /// the client sent, for the log.
    async fn throttle_wait(&self, typed: &str, key: &str, ip: IpAddr) -> Result<(), LoginError> {
        match self.throttle.check(ip, key, Instant::now()) {
            Verdict::Allow { delay } => {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(())
            }
            Verdict::Locked { remaining } => {
                warn!(%ip, user = %printable(typed), remaining_secs = remaining.as_secs(), "login refused: locked out after repeated failures");
                Err(LoginError::Credentials)
            }
        }
    }

    /// Count a failed verification and log it; the error to return.
    fn throttle_failed(&self, typed: &str, key: &str, ip: IpAddr) -> LoginError {
        let state = self.throttle.record_failure(ip, key, Instant::now());
        warn!(%ip, user = %printable(typed), network_failures = state.network_failures, user_failures = state.user_failures, user_total = state.user_total, locked = state.locked, "login failed");
        LoginError::Credentials
    }

    /// POP3 login: authenticate, apply LOGIN-DELAY, lock the maildrop (only
    /// after the password matched).
    pub async fn login(
        self: &Arc<Self>,
        user: &str,
        password: Vec<u8>,
        ip: IpAddr,
    ) -> Result<LoginOk, LoginError> {
        let address = self.authenticate(user, password, ip).await?;
        let policy = self
            .directory
            .snapshot()
            .effective(&address, &self.policy_defaults());
        if policy.login_delay_secs > 0 {
            let last = self
                .last_login
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&address)
                .copied();
            if last.is_some_and(|l| {
                l.elapsed() < Duration::from_secs(u64::from(policy.login_delay_secs))
            }) {
                info!(user = %address, "login refused: LOGIN-DELAY");
                return Err(LoginError::LoginDelay);
            }
        }
        let store = Arc::clone(&self.store);
        let a = address.clone();
        // A retention sweep or `postoffice expire` holds the lock for a
        // moment; retry briefly before telling the client [IN-USE].
        let mut opened = Err(StoreError::Locked);
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (store, a) = (Arc::clone(&store), a.clone());
            opened = tokio::task::spawn_blocking(move || store.open(&a))
                .await
                .map_err(|_| LoginError::Temp)?;
            if !matches!(opened, Err(StoreError::Locked)) {
                break;
            }
        }
        let maildrop: Arc<dyn Maildrop> = match opened {
            Ok(m) => Arc::from(m),
            Err(StoreError::Locked) => {
                info!(user = %address, "login refused: maildrop in use");
                return Err(LoginError::InUse);
            }
            Err(e) => {
                warn!(user = %address, error = %e, "cannot open maildrop");
                return Err(LoginError::Temp);
            }
        };
        // Remembered only where a delay applies: without one the map would
        // grow by an entry per user who ever logged in, for nothing.
        if policy.login_delay_secs > 0 {
            self.last_login
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(address.clone(), Instant::now());
        }
        Ok(LoginOk {
            address,
            maildrop,
            retention_days: policy.retention_days,
            login_delay_secs: policy.login_delay_secs,
        })
    }
}

impl App {
    /// Whether sessions record which messages they retrieved: retention
    /// counted from the first retrieval, and `over_quota = "make_room"`
    /// (which only deletes retrieved messages), need it.
    pub fn tracks_retrieval(&self) -> bool {
        self.config.policy.retention_from == postoffice_config::RetentionFrom::Retrieval
            || self.config.policy.over_quota == postoffice_config::OverQuota::MakeRoom
    }

    /// Record, at the end of a POP3 session, the messages it retrieved
    /// (RETR in full; 0-based indices of its snapshot), when the policy
    /// needs it ([`App::tracks_retrieval`]). Failures are logged: they cost
    /// the user nothing but a later deletion.
    pub async fn record_retrievals(&self, maildrop: Arc<dyn Maildrop>, mut indices: Vec<usize>) {
        if indices.is_empty() || !self.tracks_retrieval() {
            return;
        }
        indices.sort_unstable();
        indices.dedup();
        match tokio::task::spawn_blocking(move || maildrop.mark_retrieved(&indices)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot record retrieved messages"),
            Err(e) => warn!(error = %e, "cannot record retrieved messages"),
        }
    }
}

/// Server-wide policy defaults from the config.
pub fn policy_defaults(config: &Config) -> PolicyDefaults {
    PolicyDefaults {
        retention_days: (config.policy.retention_days > 0).then_some(config.policy.retention_days),
        login_delay_secs: config.policy.login_delay_secs,
        quota_bytes: None,
        quota_messages: None,
    }
}

/// The Maildir store of a configuration: `<data_dir>/mail`.
pub fn maildir(config: &Config) -> Maildir {
    Maildir::new(config.data_dir.join("mail"), &config.hostname)
}

/// The mail store `[storage]` names: the Maildir under data_dir, or the
/// PostgreSQL database (whose schema must be current: `postoffice db
/// migrate`). Every command that touches mail opens it through here.
pub fn store(config: &Config) -> Result<Arc<dyn MailStore>, AppError> {
    match config.storage.backend {
        postoffice_config::Backend::Maildir => Ok(Arc::new(maildir(config))),
        postoffice_config::Backend::Postgres => {
            let options = pg_options(config)?;
            let store = postoffice_pg::PgStore::connect(&options, &config.hostname)
                .map_err(|e| AppError::Storage(e.to_string()))?;
            Ok(Arc::new(store))
        }
    }
}

/// The directory of domains and users `[storage]` names: `directory.toml`
/// in data_dir, or the PostgreSQL database (shared by every node; changes
/// made on one take effect on the others within seconds).
pub fn directory(config: &Config) -> Result<Directory, AppError> {
    match config.storage.backend {
        postoffice_config::Backend::Maildir => Ok(Directory::open(&config.data_dir)?),
        postoffice_config::Backend::Postgres => {
            let options = pg_options(config)?;
            let doc = postoffice_pg::PgDirectory::connect(&options)
                .map_err(|e| AppError::Storage(e.to_string()))?;
            Ok(Directory::open_shared(&config.data_dir, Arc::new(doc))?)
        }
    }
}

/// Where the node secrets (SRS, DKIM) of `[storage]` are: files in
/// data_dir, or the PostgreSQL database every node shares (connected at
/// first use).
pub fn keys(config: &Config) -> Result<crate::keys::KeyStore, AppError> {
    match config.storage.backend {
        postoffice_config::Backend::Maildir => Ok(crate::keys::KeyStore::files(&config.data_dir)),
        postoffice_config::Backend::Postgres => Ok(crate::keys::KeyStore::postgres(
            postoffice_pg::PgKeys::new(&pg_options(config)?),
        )),
    }
}

/// The PostgreSQL connection settings of `[storage]` (the password read
/// from `password_file` when one is named).
pub fn pg_options(config: &Config) -> Result<postoffice_pg::PgOptions, AppError> {
    let s = &config.storage;
    let password = match &s.password_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                AppError::Storage(format!(
                    "cannot read storage.password_file {}: {e}",
                    path.display()
                ))
            })?;
            Some(text.lines().next().unwrap_or("").to_string())
        }
    };
    Ok(postoffice_pg::PgOptions {
        url: s.url.clone(),
        password,
        pool_size: s.pool_size,
        lease: Duration::from_secs(s.lease_secs),
        connect_timeout: Duration::from_secs(s.connect_timeout_secs),
        statement_timeout: Duration::from_secs(s.statement_timeout_secs),
        ca_file: s.ca_file.clone(),
    })
}

/// A user name as the client typed it, made safe for a log line.
pub fn printable(s: &str) -> String {
    postoffice_common::text::printable(s, 64)
}
