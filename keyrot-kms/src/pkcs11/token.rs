//! A logged-in token: the PKCS#11 module (loaded and initialised once per process), one
//! read-write session (logged in once per process and token), and the recovery when the
//! session or the login is lost (a network HSM dropped it, another component logged out).
//!
//! All of it is blocking: callers run it in `tokio::task::spawn_blocking`.

use super::kek::Handles;
use super::signing::SigningHandles;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyrot_core::SecretBytes;
use keyrot_core::custody::CustodyError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

pub(crate) const BACKEND: &str = "pkcs11";

/// Why one attempt of an operation failed.
pub(crate) enum Fail {
    /// A PKCS#11 call failed; `what` says which step, for the message.
    Ck(CkError, &'static str),
    /// The session is not logged in any more (private objects vanished).
    LoggedOut,
    /// A final answer.
    Custody(CustodyError),
}

impl From<CustodyError> for Fail {
    fn from(e: CustodyError) -> Self {
        Fail::Custody(e)
    }
}

/// The session, its cached key handles and the state they belong to.
pub(crate) struct State {
    session: Option<Session>,
    /// Validated keys found by label and id: their handle and `CKA_ID`.
    pub handles: Handles,
    /// Validated private signing keys found by reference.
    pub signing: SigningHandles,
}

/// One token, logged in. Shared by every custody of this process on the same module and
/// token, so that the process logs in once.
pub(crate) struct Token {
    ctx: Pkcs11,
    slot: Slot,
    /// The token's label, as the URI names it.
    pub label: String,
    /// The user PIN, kept to log in again when a session is lost. Zeroised on drop.
    pin: SecretBytes,
    state: Mutex<State>,
}

type Registry = Mutex<HashMap<(PathBuf, String), Weak<Token>>>;

fn modules() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    MODULES.get_or_init(Default::default)
}

fn tokens() -> &'static Registry {
    static TOKENS: OnceLock<Registry> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the token is, for messages: the redacted URI.
pub(crate) struct Place<'a> {
    pub location: &'a str,
}

impl Place<'_> {
    pub fn unavailable(&self, detail: impl Into<String>) -> CustodyError {
        CustodyError::Unavailable {
            backend: BACKEND,
            location: self.location.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn denied(&self, detail: impl Into<String>) -> CustodyError {
        CustodyError::Denied {
            backend: BACKEND,
            location: self.location.to_owned(),
            detail: detail.into(),
        }
    }

    /// A PKCS#11 error as a custody error. The PIN never reaches a PKCS#11 error message.
    pub fn map(&self, e: &CkError, what: &str) -> CustodyError {
        let CkError::Pkcs11(rv, _) = e else {
            return self.unavailable(format!("{what}: {e}"));
        };
        match rv {
            RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => {
                self.denied(format!("{what}: the token refused the PIN ({rv}); check pin-source"))
            }
            RvError::PinExpired | RvError::PinLocked | RvError::UserPinNotInitialized => self.denied(format!(
                "{what}: the user PIN cannot be used ({rv}); ask the token's security officer"
            )),
            RvError::UserNotLoggedIn | RvError::KeyFunctionNotPermitted | RvError::ActionProhibited => {
                self.denied(format!("{what}: the token refused the operation ({rv})"))
            }
            RvError::MechanismInvalid | RvError::MechanismParamInvalid | RvError::FunctionNotSupported => {
                CustodyError::Config(format!(
                    "{}: {what}: the token does not support AES-GCM with a 96-bit IV and a 128-bit tag ({rv})",
                    self.location
                ))
            }
            _ => self.unavailable(format!("{what}: {e}")),
        }
    }
}

/// Whether a failure means the session or the login is gone, so that logging in again
/// on a new session may help.
fn session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

fn handle_stale(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _)
    )
}

/// The module at `path`, loaded and initialised once per process.
fn module(path: &Path, place: &Place<'_>) -> Result<Pkcs11, CustodyError> {
    let mut modules = lock(modules());
    if let Some(ctx) = modules.get(path) {
        return Ok(ctx.clone());
    }
    if !path.is_file() {
        return Err(place.unavailable(format!(
            "the PKCS#11 module {} does not exist: check module-path and that the HSM's client library is installed",
            path.display()
        )));
    }
    let ctx = Pkcs11::new(path)
        .map_err(|e| place.unavailable(format!("the PKCS#11 module {} does not load: {e}", path.display())))?;
    initialize(&ctx).map_err(|e| place.map(&e, "C_Initialize"))?;
    modules.insert(path.to_owned(), ctx.clone());
    Ok(ctx)
}

/// Finalises and initialises the module again, so that it reads its tokens anew, unless
/// this process holds a token of it (its sessions would end). Whether it did.
fn reinitialize(ctx: &Pkcs11, path: &Path) -> bool {
    let _modules = lock(modules());
    if lock(tokens())
        .iter()
        .any(|((module, _), t)| module == path && t.strong_count() > 0)
    {
        return false;
    }
    let _ = ctx.clone().finalize();
    initialize(ctx).is_ok()
}

fn initialize(ctx: &Pkcs11) -> Result<(), CkError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another component of this process initialised the module: share it.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        other => other,
    }
}

/// What `open` needs to find and log in to a token.
pub(crate) struct TokenSpec<'a> {
    pub module: &'a Path,
    pub label: &'a str,
    pub serial: Option<&'a str>,
    pub slot_id: Option<u64>,
    pub pin: SecretBytes,
}

/// Finds the token and logs in, or joins this process's existing login to it.
pub(crate) fn open(spec: TokenSpec<'_>, place: &Place<'_>) -> Result<Arc<Token>, CustodyError> {
    let ctx = module(spec.module, place)?;
    // A module reads its tokens at C_Initialize, and SoftHSM2 can read a token whose files
    // another process is rewriting as having no label: while this process has no session
    // on the module, a token not found is looked for again after a fresh initialisation
    // (for about a second: ten times, 100 ms apart).
    let mut found = find_slot(&ctx, &spec, place);
    for _ in 0..10 {
        if !matches!(found, Err(CustodyError::Unavailable { .. })) || !reinitialize(&ctx, spec.module) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        found = find_slot(&ctx, &spec, place);
    }
    let (slot, serial) = found?;
    let mut registry = lock(tokens());
    let key = (spec.module.to_owned(), serial);
    if let Some(token) = registry.get(&key).and_then(Weak::upgrade) {
        // One login per process and token; a second configuration must know the same PIN.
        if token.pin != spec.pin {
            return Err(
                place.denied("the token refused the PIN: this process is logged in with another one; check pin-source")
            );
        }
        return Ok(token);
    }
    let token = Arc::new(Token {
        ctx,
        slot,
        label: spec.label.to_owned(),
        pin: spec.pin,
        state: Mutex::new(State {
            session: None,
            handles: HashMap::new(),
            signing: HashMap::new(),
        }),
    });
    {
        let mut state = lock(&token.state);
        token.login(&mut state, place)?;
    }
    registry.retain(|_, t| t.strong_count() > 0);
    registry.insert(key, Arc::downgrade(&token));
    Ok(token)
}

fn find_slot(ctx: &Pkcs11, spec: &TokenSpec<'_>, place: &Place<'_>) -> Result<(Slot, String), CustodyError> {
    let slots = ctx.get_slots_with_token().map_err(|e| place.map(&e, "C_GetSlotList"))?;
    let mut found = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        if spec.slot_id.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let Ok(info) = ctx.get_token_info(slot) else { continue };
        let label = info.label().trim_end();
        labels.push(format!("{label:?}"));
        if label == spec.label && spec.serial.is_none_or(|s| s == info.serial_number().trim_end()) {
            found.push((slot, info.serial_number().trim_end().to_owned()));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(place.unavailable(format!(
            "no token labelled {:?}{} is present (tokens seen: {}): check token= and that the HSM is reachable",
            spec.label,
            spec.serial.map(|s| format!(" with serial {s:?}")).unwrap_or_default(),
            if labels.is_empty() {
                "none".to_owned()
            } else {
                labels.join(", ")
            }
        ))),
        n => Err(CustodyError::Config(format!(
            "{}: {n} tokens are labelled {:?}: add serial= to the URI",
            place.location, spec.label
        ))),
    }
}

impl Token {
    /// Opens a read-write session and logs the user in (unless this process already is).
    fn login(&self, state: &mut State, place: &Place<'_>) -> Result<(), CustodyError> {
        state.session = None;
        state.handles.clear();
        state.signing.clear();
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .map_err(|e| place.map(&e, "C_OpenSession"))?;
        let pin = std::str::from_utf8(self.pin.expose())
            .map_err(|_| CustodyError::Config(format!("{}: the PIN is not UTF-8", place.location)))?;
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(place.map(&e, "C_Login")),
        }
        state.session = Some(session);
        Ok(())
    }

    /// Whether the token still answers (SoftHSM2 answers `C_GetTokenInfo` with an error
    /// once its token directory is gone; an HSM whose token was pulled does too).
    /// Asked up to three times, 25 ms apart: SoftHSM2 answers an error now and then
    /// while another process rewrites the token's files, and a token that is really gone
    /// stays gone.
    fn present(&self) -> bool {
        (0..3).any(|i| {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            self.ctx.get_token_info(self.slot).is_ok()
        })
    }

    /// Runs `op` on the session. When the session or the login was lost, logs in again on
    /// a new session and runs `op` once more; when a cached key handle went stale, finds
    /// the key again.
    pub fn run<T>(
        &self,
        place: &Place<'_>,
        mut op: impl FnMut(&mut Op<'_>) -> Result<T, Fail>,
    ) -> Result<T, CustodyError> {
        let mut state = lock(&self.state);
        let mut retried = false;
        loop {
            if state.session.is_none() {
                self.login(&mut state, place)?;
            }
            let State {
                session,
                handles,
                signing,
            } = &mut *state;
            let Some(session) = session.as_ref() else { continue };
            let (relogin, err) = match op(&mut Op {
                session,
                handles,
                signing,
                place,
                token: self,
            }) {
                Ok(v) => return Ok(v),
                Err(Fail::Custody(e)) => return Err(e),
                Err(Fail::LoggedOut) => (true, place.denied("the token logged this process out")),
                Err(Fail::Ck(e, what)) if session_lost(&e) => (true, place.map(&e, what)),
                Err(Fail::Ck(e, what)) if handle_stale(&e) => (false, place.map(&e, what)),
                Err(Fail::Ck(e, what)) => return Err(place.map(&e, what)),
            };
            if retried {
                return Err(err);
            }
            retried = true;
            if relogin {
                tracing::warn!(
                    location = place.location,
                    "PKCS#11 session lost ({err}); logging in again"
                );
                state.session = None;
            }
            state.handles.clear();
            state.signing.clear();
        }
    }

    /// Those of `wanted` the token offers, with their `C_GetMechanismInfo`
    /// (`CKR_MECHANISM_INVALID`: not offered). Asked one by one rather than through
    /// `C_GetMechanismList`, whose vendor and newer mechanism types cryptoki logs as errors.
    pub fn mechanisms(
        &self,
        wanted: &[MechanismType],
        place: &Place<'_>,
    ) -> Result<Vec<(MechanismType, MechanismInfo)>, CustodyError> {
        let mut out = Vec::new();
        for m in wanted {
            match self.ctx.get_mechanism_info(self.slot, *m) {
                Ok(info) => out.push((*m, info)),
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {}
                Err(e) => return Err(place.map(&e, "C_GetMechanismInfo")),
            }
        }
        Ok(out)
    }
}

/// One attempt of an operation: the logged-in session, the key handles found on it, and
/// where the token is.
pub(crate) struct Op<'a> {
    pub session: &'a Session,
    pub handles: &'a mut Handles,
    pub signing: &'a mut SigningHandles,
    pub place: &'a Place<'a>,
    token: &'a Token,
}

impl Op<'_> {
    /// Whether the session is logged in as the user (private objects visible).
    pub fn logged_in(&self) -> Result<bool, Fail> {
        let info = self
            .session
            .get_session_info()
            .map_err(|e| Fail::Ck(e, "C_GetSessionInfo"))?;
        Ok(matches!(
            info.session_state(),
            SessionState::RoUser | SessionState::RwUser
        ))
    }

    /// `Unavailable` when the token stopped answering, to tell a vanished token from a
    /// missing key or a bad tag.
    pub fn ensure_present(&self) -> Result<(), Fail> {
        if self.token.present() {
            return Ok(());
        }
        Err(self
            .place
            .unavailable(format!(
                "the token {:?} no longer answers (C_GetTokenInfo failed): check that the HSM is up and the token present",
                self.token.label
            ))
            .into())
    }
}
