//! Typed ids. Every id is a UUIDv7 (time-ordered, so indexes stay append-friendly) wrapped in a
//! newtype, so a `TeamId` can never be passed where a `UserId` is expected.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps a UUID read back from storage.
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID, for storage.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// A person's account.
    UserId
);
typed_id!(
    /// A team: the unit that owns keys, usage and bills.
    TeamId
);
typed_id!(
    /// An inference API key.
    ApiKeyId
);
typed_id!(
    /// A management API key (one team's management API).
    ManagementKeyId
);
typed_id!(
    /// One audit log entry.
    AuditEventId
);
typed_id!(
    /// One inbound request; also the usage event's id.
    RequestId
);
typed_id!(
    /// One outbound email.
    MailId
);
typed_id!(
    /// One signed-in session.
    SessionId
);
typed_id!(
    /// An invitation to join a team.
    InvitationId
);
typed_id!(
    /// A domain a team verifies.
    DomainId
);
typed_id!(
    /// An external identity (OpenID Connect) linked to an account.
    IdentityId
);
typed_id!(
    /// A passkey (WebAuthn credential) of an account.
    PasskeyId
);
