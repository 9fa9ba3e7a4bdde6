"""Factories for Clerk Backend API objects: User, Organization, OrganizationMembership.

Built from Clerk's published object shapes (snake_case keys, ms timestamps, the same
objects a ``user.*`` / ``organization.*`` / ``organizationMembership.*`` webhook
carries in ``data``), with overrides. Nothing here reads files.
"""

from __future__ import annotations

from typing import Any

T0 = 1_760_000_000_000  # ms


def clerk_user(
    user_id: str,
    *,
    updated_at: int,
    created_at: int | None = None,
    first: str | None = "Ada",
    last: str | None = "Lovelace",
    email: str | None = None,
    username: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A User object as ``GET /users`` returns it."""
    created = created_at if created_at is not None else updated_at
    suffix = user_id.removeprefix("user_")
    email = email if email is not None else f"{suffix}@example.com"
    address_id = f"idn_{suffix}"
    user: dict[str, Any] = {
        "id": user_id,
        "object": "user",
        "username": username,
        "first_name": first,
        "last_name": last,
        "image_url": f"https://img.clerk.com/{suffix}",
        "has_image": False,
        "primary_email_address_id": address_id,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "email_addresses": [
            {
                "id": address_id,
                "object": "email_address",
                "email_address": email,
                "reserved": False,
                "verification": {
                    "object": "verification_otp",
                    "status": "verified",
                    "strategy": "email_code",
                    "attempts": 1,
                    "expire_at": created + 600_000,
                },
                "linked_to": [],
                "matches_sso_connection": False,
                "created_at": created,
                "updated_at": created,
            }
        ],
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "public_metadata": {"plan": "free"},
        "private_metadata": {"stripe_customer": f"cus_{suffix}"},
        "unsafe_metadata": {},
        "external_id": None,
        "last_sign_in_at": updated_at,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "created_at": created,
        "updated_at": updated_at,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "last_active_at": updated_at,
        "legal_accepted_at": None,
    }
    user.update(overrides)
    return user


def clerk_organization(
    org_id: str, *, updated_at: int, name: str = "Initech", slug: str | None = None
) -> dict[str, Any]:
    """An Organization object as ``GET /organizations`` returns it."""
    return {
        "id": org_id,
        "object": "organization",
        "name": name,
        "slug": slug if slug is not None else org_id.lower().replace("_", "-"),
        "image_url": f"https://img.clerk.com/{org_id}",
        "has_image": False,
        "members_count": None,
        "pending_invitations_count": None,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {},
        "private_metadata": {},
        "created_by": None,
        "created_at": updated_at,
        "updated_at": updated_at,
    }


def clerk_membership(
    membership_id: str,
    *,
    org: dict[str, Any],
    user_id: str,
    updated_at: int,
    role: str = "org:member",
) -> dict[str, Any]:
    """An OrganizationMembership object (nested organization and public_user_data)."""
    return {
        "id": membership_id,
        "object": "organization_membership",
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": ["org:sys_memberships:read"],
        "public_metadata": {},
        "private_metadata": {},
        "organization": org,
        "public_user_data": {
            "user_id": user_id,
            "first_name": "Ada",
            "last_name": "Lovelace",
            "image_url": f"https://img.clerk.com/{user_id}",
            "has_image": False,
            "identifier": f"{user_id}@example.com",
            "username": None,
        },
        "created_at": updated_at,
        "updated_at": updated_at,
    }


def envelope(event_type: str, data: dict[str, Any], *, at: int) -> dict[str, Any]:
    """A webhook envelope as Clerk sends it around ``data``."""
    return {
        "data": data,
        "event_attributes": {"http_request": {"client_ip": "", "user_agent": ""}},
        "instance_id": "ins_2testinstance",
        "object": "event",
        "timestamp": at,
        "type": event_type,
    }
